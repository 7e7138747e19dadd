//! Downloads against a local HTTP server (there is no internet here): checksums, resume after a
//! dropped connection, the cache, a mirror, zip extraction, and a server that lies.
use scratchllm_fetch::{fetch_file, get, Asset, Network, Options, Outcome, Progress, RemoteFile};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Quick patience for tests: a hung server is given up on in a fraction of a second.
fn patient(retries: u32) -> Network {
    Network {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_millis(300),
        retries,
        backoff: Duration::from_millis(10),
    }
}

struct Quiet;
impl Progress for Quiet {
    fn start(&mut self, _: &str, _: Option<u64>, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self, _: &str, _: &Outcome) {}
}

/// Serves `body` at every path, honouring `Range: bytes=N-`. The first `drop_first` responses send
/// only half the body and close the connection. Returns the base URL and a request counter.
fn serve(body: Vec<u8>, drop_first: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(32) {
            let Ok(mut stream) = stream else { continue };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let mut start = 0usize;
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    start = r.trim().trim_end_matches('-').parse().unwrap_or(0);
                }
            }
            let rest = &body[start.min(body.len())..];
            let status = if start > 0 {
                "206 Partial Content"
            } else {
                "200 OK"
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                rest.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let send = if n < drop_first {
                &rest[..rest.len() / 2]
            } else {
                rest
            };
            let _ = stream.write_all(send);
        }
    });
    (url, count)
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn resumes_an_interrupted_download_and_then_uses_the_cache() {
    let body: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let want = sha256_hex(&body);
    let (url, count) = serve(body.clone(), 1);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("weights.bin");
    let url = format!("{url}/weights.bin");
    let first = fetch_file(&url, &dest, Some(&want), &patient(0), &mut Quiet)
        .unwrap_err()
        .to_string();
    assert!(first.contains("run again to resume"), "{first}");
    assert!(!dest.exists(), "a partial download must not look complete");
    match fetch_file(&url, &dest, Some(&want), &patient(0), &mut Quiet).unwrap() {
        Outcome::Downloaded {
            bytes,
            resumed_from,
        } => {
            assert_eq!(bytes, body.len() as u64);
            assert_eq!(resumed_from, body.len() as u64 / 2);
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(
        fetch_file(&url, &dest, Some(&want), &patient(0), &mut Quiet).unwrap(),
        Outcome::Cached
    );
    assert_eq!(
        count.load(Ordering::SeqCst),
        2,
        "the cached file must not be fetched again"
    );
}

#[test]
fn a_wrong_checksum_is_refused_and_the_part_removed() {
    let (url, _) = serve(b"tampered".to_vec(), 0);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("x.txt");
    let e = fetch_file(
        &format!("{url}/x"),
        &dest,
        Some(&"0".repeat(64)),
        &patient(2),
        &mut Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("does not match") && e.contains("x.txt"), "{e}");
    assert!(!dest.exists() && !dir.path().join("x.txt.part").exists());
}

#[test]
fn unreachable_servers_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = fetch_file(
        "http://127.0.0.1:9/nothing",
        &dir.path().join("n"),
        None,
        &patient(0),
        &mut Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("http://127.0.0.1:9/nothing"), "{e}");
}

#[test]
fn a_mirror_serves_a_whole_asset_with_zip_extraction() {
    // A zip holding one member, as the UCI SMS archive does.
    let mut zipped = Vec::new();
    {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(&mut zipped));
        w.start_file(
            "SMSSpamCollection",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        w.write_all(b"ham\tHello\nspam\tWin\n").unwrap();
        w.finish().unwrap();
    }
    let (url, _) = serve(zipped, 0);
    const FILES: &[RemoteFile] = &[RemoteFile {
        name: "a.zip",
        url: "https://example.invalid/a.zip",
        sha256: None,
        unzip: Some("SMSSpamCollection"),
        unzip_to: Some("spam.tsv"),
    }];
    let asset = Asset {
        name: "spam",
        about: "",
        files: FILES,
        hub: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let out = get(
        &asset,
        &Options {
            mirror: Some(url),
            ..Options::new(dir.path().to_path_buf())
        },
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("spam.tsv")).unwrap(),
        "ham\tHello\nspam\tWin\n"
    );
}

/// Accepts connections and never answers (after sending `head`, if any), holding each open; counts
/// them.
fn hang(head: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(head);
            held.push(stream);
        }
    });
    (url, count)
}

#[test]
fn a_server_that_never_answers_is_given_up_on_after_the_retries() {
    let (url, count) = hang(b"");
    let dir = tempfile::tempdir().unwrap();
    let e = fetch_file(
        &format!("{url}/weights.bin"),
        &dir.path().join("weights.bin"),
        None,
        &patient(2),
        &mut Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&url)
            && e.contains("did not answer in time")
            && e.contains("gave up after 3 attempts"),
        "{e}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 3, "one request per attempt");
}

#[test]
fn a_stalled_transfer_is_named_and_the_part_kept() {
    let (url, count) = hang(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("w.bin");
    let e = fetch_file(
        &format!("{url}/w.bin"),
        &dest,
        None,
        &patient(1),
        &mut Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("download interrupted after 10 bytes (the transfer stalled)")
            && e.contains("gave up after 2 attempts")
            && e.contains("run again to resume"),
        "{e}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(!dest.exists());
    // The second attempt restarted the file (this server ignores Range): 10 bytes, not 20.
    assert_eq!(
        std::fs::read(dir.path().join("w.bin.part")).unwrap(),
        b"0123456789"
    );
}

#[test]
fn retries_resume_dropped_transfers_by_themselves() {
    let body: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let want = sha256_hex(&body);
    let (url, count) = serve(body.clone(), 2);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("weights.bin");
    let got = fetch_file(
        &format!("{url}/weights.bin"),
        &dest,
        Some(&want),
        &patient(3),
        &mut Quiet,
    )
    .unwrap();
    // Halves: 200000 bytes, then half the remaining 200000, then the last 100000 resumed.
    assert_eq!(
        got,
        Outcome::Downloaded {
            bytes: body.len() as u64,
            resumed_from: 300_000
        }
    );
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(count.load(Ordering::SeqCst), 3);
}
