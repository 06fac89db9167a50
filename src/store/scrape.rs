//! The scrape path: one encoder thread that scrapes arriving together share, that skips
//! scrapes whose client is gone, and that compresses for clients that accept gzip.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use hyper::header::{ACCEPT_ENCODING, HeaderMap};
use tokio::sync::oneshot;

use crate::store::Metrics;
use crate::util::background::{pause_point, spawn_low_priority};

/// Smallest exposition worth compressing. Below one TCP segment's payload (1,448 bytes over
/// Ethernet) gzip saves no packet. Above it, it always pays: measured on this project's VM,
/// gzip level 1 (flate2's miniz_oxide) compresses the text format at about 1 GB/s of input
/// (a 7 KB exposition in 0.1 ms, 10 MB of 100,000 series in 10 ms) to 7–25 % of its size, so
/// each byte costs about 1 ns to compress and saves 0.75–0.93 of the 8 ns a byte takes on a
/// 1 Gbit/s link (docs/benchmark.md).
pub const GZIP_MIN_BYTES: usize = 1_448;

/// Expositions that responses may hold at once. Past it (clients that do not read, each held
/// up to `limits.request_timeout`), a scrape gets the newest of them instead of a new encode:
/// memory stays at this many expositions however many clients stall.
pub const MAX_LIVE_EXPOSITIONS: usize = 2;

/// One encoded exposition, shared by every scrape that waited for it.
#[derive(Clone, Debug)]
pub struct Exposition {
    pub text: Bytes,
    /// Present when a waiting scrape accepts gzip and the text is at least [`GZIP_MIN_BYTES`].
    pub gzip: Option<Bytes>,
}

/// The bytes behind an [`Exposition`]: one allocation the encoder can tell is still alive.
#[derive(Debug)]
struct Encoded {
    text: Vec<u8>,
    gzip: Option<Vec<u8>>,
}

struct TextOf(Arc<Encoded>);
struct GzipOf(Arc<Encoded>);

impl AsRef<[u8]> for TextOf {
    fn as_ref(&self) -> &[u8] {
        &self.0.text
    }
}

impl AsRef<[u8]> for GzipOf {
    fn as_ref(&self) -> &[u8] {
        self.0.gzip.as_deref().unwrap_or_default()
    }
}

impl Exposition {
    fn of(encoded: &Arc<Encoded>) -> Self {
        Self {
            text: Bytes::from_owner(TextOf(Arc::clone(encoded))),
            gzip: encoded
                .gzip
                .as_ref()
                .map(|_| Bytes::from_owner(GzipOf(Arc::clone(encoded)))),
        }
    }
}

struct Request {
    reply: oneshot::Sender<Exposition>,
    gzip: bool,
}

/// Encodes `/metrics` on a background thread of its own (see [`crate::util::background`]), so that
/// encoding a large exposition never takes CPU time from the threads that answer webhooks. Scrapes that arrive
/// while an encode runs wait for the next one, and all of them share it; a scrape whose
/// client has gone by then is not encoded for. The thread ends when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct EncoderThread {
    requests: mpsc::Sender<Request>,
    encodes: Arc<AtomicU64>,
}

impl EncoderThread {
    pub fn spawn(metrics: Arc<Metrics>) -> std::io::Result<Self> {
        return_large_buffers_to_the_os();
        let (requests, queue) = mpsc::channel::<Request>();
        let encodes = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&encodes);
        spawn_low_priority("metrics-encoder", move || {
            let mut live: Vec<Weak<Encoded>> = Vec::new();
            while let Ok(first) = queue.recv() {
                let waiting: Vec<Request> = std::iter::once(first)
                    .chain(queue.try_iter())
                    .filter(|request| !request.reply.is_closed())
                    .collect();
                if waiting.is_empty() {
                    continue;
                }
                live.retain(|encoded| encoded.strong_count() > 0);
                let newest_live = live.last().and_then(Weak::upgrade);
                let encoded = match newest_live {
                    Some(encoded) if live.len() >= MAX_LIVE_EXPOSITIONS => encoded,
                    _ => {
                        counted.fetch_add(1, Ordering::Relaxed);
                        let text = metrics.encode();
                        let gzip = (waiting.iter().any(|request| request.gzip)
                            && text.len() >= GZIP_MIN_BYTES)
                            .then(|| compress(&text));
                        let encoded = Arc::new(Encoded { text, gzip });
                        live.push(Arc::downgrade(&encoded));
                        encoded
                    }
                };
                let exposition = Exposition::of(&encoded);
                drop(encoded);
                for request in waiting {
                    let _ = request.reply.send(exposition.clone());
                }
            }
        })?;
        Ok(Self { requests, encodes })
    }

    /// The exposition, or `None` if the encoder thread is gone.
    pub async fn encode(&self, gzip: bool) -> Option<Exposition> {
        let (reply, exposition) = oneshot::channel();
        self.requests.send(Request { reply, gzip }).ok()?;
        exposition.await.ok()
    }

    /// Encodes done so far.
    pub fn encodes(&self) -> u64 {
        self.encodes.load(Ordering::Relaxed)
    }
}

/// Input compressed between two pause points: 40–60 µs of work at gzip level 1, well inside
/// a background slice.
const COMPRESS_PIECE: usize = 16 * 1024;

fn compress(text: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(text.len() / 8), Compression::fast());
    for piece in text.chunks(COMPRESS_PIECE) {
        encoder
            .write_all(piece)
            .expect("compressing into memory cannot fail");
        pause_point();
    }
    encoder
        .finish()
        .expect("compressing into memory cannot fail")
}

/// Whether the request's `Accept-Encoding` admits gzip (`gzip` or `*`, with a non-zero `q`).
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|param| {
                param
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// Expositions (megabytes, freed after each scrape) go back to the OS when freed. glibc
/// otherwise raises its mmap threshold to the size of the first one freed and keeps the later
/// ones on its heap: an exposition's size (about 100 bytes per series) held for good.
fn return_large_buffers_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; a fixed threshold also turns off
    // glibc's dynamic adjustment of it.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use hyper::header::HeaderValue;

    use super::*;
    use crate::store::Limits;

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(Limits {
            max_smartlocks: 100,
            max_operations: 10,
            max_series: 10_000,
            max_series_per_lock: 100,
        }))
    }

    #[tokio::test]
    async fn encoder_thread_encodes_at_a_lower_priority() {
        let encoder = EncoderThread::spawn(metrics()).unwrap();
        let exposition = encoder.encode(false).await.unwrap();
        let body = String::from_utf8(exposition.text.to_vec()).unwrap();
        assert!(body.contains("nuki_exporter_build_info{"));
        // /proc/self/task/<tid>/stat: field 19 is the thread's nice value.
        let niceness: Vec<i64> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .map(|task| task.unwrap().path())
            .filter(|task| {
                std::fs::read_to_string(task.join("comm"))
                    .is_ok_and(|c| c.trim() == "metrics-encoder")
            })
            .map(|task| {
                let stat = std::fs::read_to_string(task.join("stat")).unwrap();
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .unwrap()
                    .1
                    .split_whitespace()
                    .collect();
                fields[16].parse().unwrap()
            })
            .collect();
        assert!(
            niceness.contains(&i64::from(crate::util::background::BACKGROUND_NICENESS)),
            "{niceness:?}"
        );
    }

    #[tokio::test]
    async fn scrapes_waiting_together_share_one_encode_and_gone_clients_none() {
        let encoder = EncoderThread::spawn(metrics()).unwrap();
        encoder.encode(false).await.unwrap();
        assert_eq!(encoder.encodes(), 1);
        // A scrape whose client gave up before its turn.
        let (reply, gone) = oneshot::channel();
        drop(gone);
        encoder
            .requests
            .send(Request { reply, gzip: false })
            .unwrap();
        // Ten scrapes queued before the encoder thread looks: one encode for all.
        let mut waiting = Vec::new();
        for gzip in [false, true].repeat(5) {
            let (reply, exposition) = oneshot::channel();
            encoder.requests.send(Request { reply, gzip }).unwrap();
            waiting.push(exposition);
        }
        let mut texts = Vec::new();
        for exposition in waiting {
            texts.push(exposition.await.unwrap());
        }
        assert!(encoder.encodes() <= 3, "{} encodes", encoder.encodes());
        // Every scrape got an exposition, the gzip of the same text when it asked for it.
        let last = texts.last().unwrap();
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&last.gzip.as_ref().unwrap()[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, last.text);
    }

    #[tokio::test]
    async fn clients_that_hold_expositions_get_the_newest_one_past_the_cap() {
        let encoder = EncoderThread::spawn(metrics()).unwrap();
        let mut held = Vec::new();
        for _ in 0..MAX_LIVE_EXPOSITIONS {
            held.push(encoder.encode(false).await.unwrap());
        }
        let encodes = encoder.encodes();
        assert_eq!(encodes, MAX_LIVE_EXPOSITIONS as u64);
        let shared = encoder.encode(false).await.unwrap();
        assert_eq!(encoder.encodes(), encodes);
        assert_eq!(shared.text.as_ptr(), held.last().unwrap().text.as_ptr());
        drop(held);
        drop(shared);
        encoder.encode(false).await.unwrap();
        assert_eq!(encoder.encodes(), encodes + 1);
    }

    #[test]
    fn accept_encoding_is_read_as_rfc_9110_says() {
        let accepts = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_static(value));
            accepts_gzip(&headers)
        };
        assert!(accepts("gzip"));
        assert!(accepts("identity, GZIP;q=0.5"));
        assert!(accepts("*"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("br, deflate"));
        assert!(!accepts("gzipx"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
