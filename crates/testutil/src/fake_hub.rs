//! A local stand-in for the Hugging Face Hub (there is no internet in tests): serves files by
//! path over HTTP/1.1, honours `Range: bytes=N-`, can demand `Authorization: Bearer TOKEN` (401
//! without one, 403 with another, as the Hub answers for gated models), can cut answers short,
//! and records every request. Also builds the tiny model repositories it serves.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub authorization: Option<String>,
    pub range: Option<u64>,
}

#[derive(Default)]
struct State {
    files: BTreeMap<String, Vec<u8>>,
    token: Option<String>,
    /// Path → how many more answers send half the body and close.
    cut: BTreeMap<String, usize>,
    seen: Vec<Seen>,
}

/// The server; it runs until the test process ends.
pub struct FakeHub {
    /// `http://127.0.0.1:PORT`, to pass as the mirror.
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FakeHub {
    /// Serves `files` (URL path without the leading `/` → body), demanding `token` if given.
    pub fn start(files: BTreeMap<String, Vec<u8>>, token: Option<&str>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            files,
            token: token.map(str::to_string),
            ..State::default()
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                answer(stream, &shared);
            }
        });
        FakeHub { url, state }
    }

    /// The next `times` answers for `path` send half the body (with the whole length announced)
    /// and close the connection.
    pub fn cut(&self, path: &str, times: usize) {
        self.state
            .lock()
            .unwrap()
            .cut
            .insert(path.to_string(), times);
    }

    /// Replaces (or adds) the file at `path`.
    pub fn put(&self, path: &str, body: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), body);
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

fn answer(mut stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    let _ = reader.read_line(&mut request);
    let path = request
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    let (mut authorization, mut range) = (None, None);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "authorization" => authorization = Some(value.to_string()),
            "range" => {
                range = value
                    .strip_prefix("bytes=")
                    .and_then(|r| r.trim_end_matches('-').parse().ok())
            }
            _ => {}
        }
    }
    let mut s = state.lock().unwrap();
    s.seen.push(Seen {
        path: path.clone(),
        authorization: authorization.clone(),
        range,
    });
    let want = s.token.as_ref().map(|t| format!("Bearer {t}"));
    let refused = match (&want, &authorization) {
        (None, _) => None,
        (Some(_), None) => Some("401 Unauthorized"),
        (Some(w), Some(a)) => (w != a).then_some("403 Forbidden"),
    };
    let (status, body) = match (refused, s.files.get(&path)) {
        (Some(status), _) => (status, b"Access to this model is restricted".to_vec()),
        (None, None) => ("404 Not Found", b"Entry not found".to_vec()),
        (None, Some(body)) => {
            let start = range.unwrap_or(0).min(body.len() as u64) as usize;
            let status = if start > 0 {
                "206 Partial Content"
            } else {
                "200 OK"
            };
            (status, body[start..].to_vec())
        }
    };
    let cut = match s.cut.get_mut(&path) {
        Some(n) if *n > 0 && body.len() > 1 => {
            *n -= 1;
            true
        }
        _ => false,
    };
    drop(s);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(if cut { &body[..body.len() / 2] } else { &body });
}

/// A safetensors file of F32 vectors, laid out as the format says (header padded to 8 bytes).
pub fn safetensors(tensors: &[(&str, &[f32])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, values) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": [values.len()], "data_offsets": [start, data.len()]}),
        );
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(data);
    out
}

/// A tiny model repository as the Hub lays it out, its paths under `prefix/`: the four JSON
/// files and either `model.safetensors` (`shards` = 0) or an index and that many shards
/// (`model-0000K-of-0000N.safetensors`, two tensors each).
pub fn model_repo(prefix: &str, shards: usize) -> BTreeMap<String, Vec<u8>> {
    let json = |v: serde_json::Value| v.to_string().into_bytes();
    let mut files = BTreeMap::new();
    let mut put = |name: &str, body: Vec<u8>| files.insert(format!("{prefix}/{name}"), body);
    put(
        "config.json",
        json(serde_json::json!({"model_type": "llama", "hidden_size": 4})),
    );
    put(
        "generation_config.json",
        json(serde_json::json!({"eos_token_id": 2})),
    );
    put(
        "tokenizer.json",
        json(serde_json::json!({"version": "1.0", "model": {"type": "BPE"}})),
    );
    put(
        "tokenizer_config.json",
        json(serde_json::json!({"chat_template": "{{ messages }}"})),
    );
    if shards == 0 {
        put(
            "model.safetensors",
            safetensors(&[("embed", &[1.0, 2.0]), ("norm", &[3.0])]),
        );
        return files;
    }
    let mut weight_map = serde_json::Map::new();
    for k in 1..=shards {
        let name = format!("model-{k:05}-of-{shards:05}.safetensors");
        let (a, b) = (format!("layers.{k}.a"), format!("layers.{k}.b"));
        let value = k as f32;
        put(&name, safetensors(&[(&a, &[value; 3]), (&b, &[-value])]));
        weight_map.insert(a, name.clone().into());
        weight_map.insert(b, name.into());
    }
    put(
        "model.safetensors.index.json",
        json(
            serde_json::json!({"metadata": {"total_size": 16 * shards}, "weight_map": weight_map}),
        ),
    );
    files
}
