//! HTTP/1.1 as the service speaks it, on plain `std::net` streams: requests read with bounded
//! heads and bodies (413 past the limit, before the body is read), keep-alive, replies with a
//! length; query strings, percent-decoding and the one part of a multipart upload.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use serde_json::{Value, json};

/// Longest request line or header line, and most header lines.
const MAX_LINE: usize = 8 << 10;
const MAX_HEADERS: usize = 100;

/// A request, its body read in full.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the client keeps the connection open for another request.
    pub keep_alive: bool,
}

impl Request {
    /// A header's value (names compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One line ending in CRLF (or LF), without it; `None` at a clean end of stream.
fn read_line(reader: &mut BufReader<TcpStream>) -> Result<Option<String>, Reply> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|_| Reply::error(408, "the request did not arrive in time"))?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() > MAX_LINE || !line.ends_with(b"\n") {
        return Err(Reply::error(431, "a request or header line is too long"));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| Reply::error(400, "the request head is not UTF-8"))
}

/// Reads the next request of a connection: `Ok(None)` when the client closed it; an error
/// reply (after which the connection is closed) for a malformed request or one over `limit`
/// bytes of body, which is then never read. `Expect: 100-continue` is answered.
pub fn read_request(
    reader: &mut BufReader<TcpStream>,
    limit: usize,
) -> Result<Option<Request>, Reply> {
    let mut first = match read_line(reader)? {
        Some(line) => line,
        None => return Ok(None),
    };
    // Tolerate empty lines between requests (RFC 9112 §2.2).
    while first.is_empty() {
        first = match read_line(reader)? {
            Some(line) => line,
            None => return Ok(None),
        };
    }
    let parts: Vec<&str> = first.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(Reply::error(400, "malformed request line"));
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(Reply::error(505, format!("{version:?} is not HTTP/1.1"))),
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| Reply::error(400, "the head ended early"))?;
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(Reply::error(431, "too many header lines"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| Reply::error(400, format!("malformed header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut request = Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        body: Vec::new(),
        keep_alive: false,
    };
    let connection = request
        .header("connection")
        .unwrap_or("")
        .to_ascii_lowercase();
    request.keep_alive = if http10 {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    let too_large = || Reply::error(413, format!("the body is over the limit of {limit} bytes"));
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    let length = match request.header("content-length") {
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| Reply::error(400, format!("Content-Length {v:?} is not a number")))?,
        ),
        None => None,
    };
    if length.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    if request
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        let _ = reader.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let cut = |e: std::io::Error| Reply::error(400, format!("the body was cut off: {e}"));
    if chunked {
        loop {
            let size_line =
                read_line(reader)?.ok_or_else(|| Reply::error(400, "the body ended early"))?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| Reply::error(400, "malformed chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while read_line(reader)?.is_some_and(|l| !l.is_empty()) {}
                break;
            }
            if request.body.len() + size > limit {
                return Err(too_large());
            }
            let start = request.body.len();
            request.body.resize(start + size, 0);
            reader.read_exact(&mut request.body[start..]).map_err(cut)?;
            read_line(reader)?;
        }
    } else if let Some(n) = length {
        request.body.resize(n, 0);
        reader.read_exact(&mut request.body).map_err(cut)?;
    }
    Ok(Some(request))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// A reply, built by the handlers and sent by [`Reply::send`].
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: serde_json::to_vec_pretty(value).expect("JSON values serialise"),
            headers: Vec::new(),
        }
    }

    pub fn ok(value: &Value) -> Self {
        Self::json(200, value)
    }

    /// `{"error": message}` with a status.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(status, &json!({ "error": message.into() }))
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::error(404, format!("{what} not found"))
    }

    pub fn bytes(content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            status: 200,
            content_type,
            body,
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Writes it; `keep_alive` says whether the connection stays open after it.
    pub fn write(&self, stream: &mut impl Write, keep_alive: bool) -> std::io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             X-Content-Type-Options: nosniff\r\nConnection: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len(),
            if keep_alive { "keep-alive" } else { "close" },
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(&self.body)?;
        stream.flush()
    }
}

/// `%XX` and `+` decoded; `None` when the result is not UTF-8 or an escape is malformed.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A URL split into its decoded path segments and query parameters.
pub struct Target {
    pub segments: Vec<String>,
    pub params: HashMap<String, String>,
}

impl Target {
    /// `None` when an escape is malformed or not UTF-8.
    pub fn parse(url: &str) -> Option<Self> {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let segments = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect::<Option<Vec<_>>>()?;
        let params = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                Some((percent_decode(k)?, percent_decode(v)?))
            })
            .collect::<Option<HashMap<_, _>>>()?;
        Some(Self { segments, params })
    }

    /// A parameter parsed, its default when absent, a 400 naming it when malformed.
    pub fn param<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, Reply> {
        match self.params.get(name) {
            None => Ok(default),
            Some(v) if v.is_empty() => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| Reply::error(400, format!("parameter {name}={v:?} is not valid"))),
        }
    }
}

/// The first file part of a `multipart/form-data` body: (file name, bytes). `None` when the
/// body has no such part.
pub fn multipart_file<'a>(
    content_type: &str,
    body: &'a [u8],
) -> Option<(Option<String>, &'a [u8])> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let find = |haystack: &[u8], needle: &[u8], from: usize| -> Option<usize> {
        haystack
            .get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut at = find(body, delimiter.as_bytes(), 0)? + delimiter.len();
    loop {
        // Each part: CRLF, headers, CRLF CRLF, content, CRLF, delimiter.
        if body.get(at..at + 2) == Some(b"--") {
            return None;
        }
        let headers_end = find(body, b"\r\n\r\n", at)?;
        let headers = String::from_utf8_lossy(&body[at..headers_end]).to_lowercase();
        let original = String::from_utf8_lossy(&body[at..headers_end]).into_owned();
        let content_start = headers_end + 4;
        let next = find(body, format!("\r\n{delimiter}").as_bytes(), content_start)?;
        if headers.contains("filename=") || headers.contains("content-type: image/") {
            let name = original
                .split("filename=")
                .nth(1)
                .map(|rest| rest.trim_start_matches('"').split('"').next().unwrap_or(""))
                .filter(|n| !n.is_empty())
                .map(str::to_string);
            return Some((name, &body[content_start..next]));
        }
        at = next + 2 + delimiter.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_decode_and_refuse_bad_escapes() {
        let t = Target::parse("/api/images/%2E%2E%2Fetc/image?k=5&name=a+b%21").unwrap();
        assert_eq!(t.segments, ["api", "images", "../etc", "image"]);
        assert_eq!(t.params["name"], "a b!");
        assert_eq!(t.param("k", 10usize).ok(), Some(5));
        assert_eq!(t.param("missing", 10usize).ok(), Some(10));
        assert!(t.param::<usize>("name", 0).is_err());
        assert!(Target::parse("/a%zz").is_none());
        assert!(Target::parse("/a%ff").is_none());
    }

    #[test]
    fn multipart_finds_the_file_part() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n5\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"image\"; filename=\"cat.png\"\r\nContent-Type: image/png\r\n\r\n\
\x89PNG\r\n--XyZ--\r\n";
        let (name, bytes) = multipart_file("multipart/form-data; boundary=XyZ", body).unwrap();
        assert_eq!(name.as_deref(), Some("cat.png"));
        assert_eq!(bytes, b"\x89PNG");
        assert!(multipart_file("multipart/form-data; boundary=other", body).is_none());
        let no_file =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n5\r\n--XyZ--\r\n";
        assert!(multipart_file("multipart/form-data; boundary=XyZ", no_file).is_none());
    }
}
