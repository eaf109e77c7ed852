//! The embedding queue: one worker owns the model and embeds what the request threads hand it,
//! in batches of whatever is waiting. The queue is bounded: past it, a request is refused at
//! once (the service answers 503 with Retry-After) instead of piling up memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use image::RgbImage;

use crate::embed::EmbedOptions;
use crate::embedder::Embedder;

struct Job {
    image: RgbImage,
    reply: mpsc::Sender<Vec<f32>>,
}

/// Why an image was not embedded.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// The queue is full: try again shortly.
    Busy,
    /// The worker is gone (it panicked): nothing will be embedded.
    Stopped,
}

/// A handle to the embedding worker; cheap to share between request threads.
pub struct EmbedQueue {
    sender: SyncSender<Job>,
    waiting: Arc<AtomicUsize>,
    capacity: usize,
}

impl EmbedQueue {
    /// Starts the worker with room for `capacity` waiting images, embedding up to `max_batch`
    /// at a time.
    pub fn start(embedder: Embedder, capacity: usize, max_batch: usize) -> Self {
        let (sender, receiver) = mpsc::sync_channel::<Job>(capacity.max(1));
        let waiting = Arc::new(AtomicUsize::new(0));
        let counter = waiting.clone();
        std::thread::Builder::new()
            .name("embedding".into())
            .spawn(move || work(&embedder, &receiver, &counter, max_batch.max(1)))
            .expect("spawning the embedding worker");
        Self {
            sender,
            waiting,
            capacity: capacity.max(1),
        }
    }

    /// Embeds one image, waiting for the worker; refused at once when the queue is full.
    pub fn embed(&self, image: RgbImage) -> Result<Vec<f32>, Refused> {
        let (reply, answer) = mpsc::channel();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        match self.sender.try_send(Job { image, reply }) {
            Ok(()) => answer.recv().map_err(|_| Refused::Stopped),
            Err(e) => {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => Refused::Busy,
                    TrySendError::Disconnected(_) => Refused::Stopped,
                })
            }
        }
    }

    /// Images waiting or being embedded now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

fn work(embedder: &Embedder, receiver: &Receiver<Job>, waiting: &AtomicUsize, max_batch: usize) {
    let options = EmbedOptions {
        batch_size: max_batch,
        quiet: true,
        cache: false,
        ..EmbedOptions::default()
    };
    let dim = embedder.embedding_dim();
    while let Ok(first) = receiver.recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (images, replies): (Vec<RgbImage>, Vec<_>) =
            jobs.into_iter().map(|j| (j.image, j.reply)).unzip();
        let rows = embedder.embed_images(&images, &options);
        for (reply, row) in replies.into_iter().zip(rows.chunks_exact(dim)) {
            waiting.fetch_sub(1, Ordering::SeqCst);
            let _ = reply.send(row.to_vec());
        }
    }
}
