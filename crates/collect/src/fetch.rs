//! Downloading images from URL lists: a timeout on every request, a size limit enforced while
//! reading (not trusted from headers), an image content type, and retries with exponential
//! back-off for failures that may pass (timeouts, connection errors, 429 and 5xx).

use std::io::Read;
use std::time::Duration;

/// Limits for downloads.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Largest body accepted, in bytes.
    pub max_bytes: u64,
    /// Extra attempts after a failure that may pass.
    pub retries: u32,
    /// Wait before the first retry; doubled each time.
    pub backoff: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(20),
            max_bytes: 20 << 20,
            retries: 2,
            backoff: Duration::from_millis(500),
        }
    }
}

/// Why a download was refused (the manifest's reason).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    #[error("HTTP {0}")]
    Status(u16),
    #[error("content type {0:?} is not an image")]
    NotImage(String),
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    #[error("download failed: {0}")]
    Transport(String),
}

impl FetchError {
    /// Whether trying again may help.
    fn transient(&self) -> bool {
        match self {
            FetchError::Status(code) => *code == 429 || *code >= 500,
            FetchError::Transport(_) => true,
            FetchError::NotImage(_) | FetchError::TooLarge(_) => false,
        }
    }

    /// A short machine-friendly reason.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Status(_) => "http-error",
            FetchError::NotImage(_) => "not-an-image",
            FetchError::TooLarge(_) => "too-large",
            FetchError::Transport(_) => "download-failed",
        }
    }
}

/// An HTTP agent with the options' timeout.
pub fn agent(options: &FetchOptions) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(options.timeout)
        .user_agent(concat!("lookalike-collect/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn fetch_once(
    agent: &ureq::Agent,
    url: &str,
    options: &FetchOptions,
) -> Result<Vec<u8>, FetchError> {
    let response = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, _)) => return Err(FetchError::Status(code)),
        Err(e) => return Err(FetchError::Transport(e.to_string())),
    };
    let content_type = response.content_type().to_ascii_lowercase();
    // Servers often send images as octet-stream; the bytes are checked when decoded.
    if !(content_type.starts_with("image/") || content_type == "application/octet-stream") {
        return Err(FetchError::NotImage(content_type));
    }
    if let Some(length) = response
        .header("Content-Length")
        .and_then(|l| l.trim().parse::<u64>().ok())
        && length > options.max_bytes
    {
        return Err(FetchError::TooLarge(options.max_bytes));
    }
    let mut body = Vec::new();
    response
        .into_reader()
        .take(options.max_bytes + 1)
        .read_to_end(&mut body)
        .map_err(|e| FetchError::Transport(e.to_string()))?;
    if body.len() as u64 > options.max_bytes {
        return Err(FetchError::TooLarge(options.max_bytes));
    }
    Ok(body)
}

/// Downloads `url`, retrying transient failures with exponential back-off.
pub fn fetch(
    agent: &ureq::Agent,
    url: &str,
    options: &FetchOptions,
) -> Result<Vec<u8>, FetchError> {
    let mut wait = options.backoff;
    let mut attempt = 0;
    loop {
        match fetch_once(agent, url, options) {
            Err(e) if e.transient() && attempt < options.retries => {
                std::thread::sleep(wait);
                wait *= 2;
                attempt += 1;
            }
            result => return result,
        }
    }
}
