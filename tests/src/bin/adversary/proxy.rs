//! The hostile server: a proxy on 127.0.0.1:0 in front of the real mock server that answers
//! each request as the plan says (one request per connection), and remembers which patches it
//! spoiled. Turned honest, it passes everything through.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::plan::{Act, Kind, OddJson, Plan};

/// What the proxy did, for the oracle and for a failure's report.
#[derive(Debug, Default)]
pub struct Record {
    /// Paths of patches a spoiling act answered.
    pub spoiled: BTreeSet<String>,
    /// One line per hostile act.
    pub acts: Vec<String>,
    counts: BTreeMap<Kind, u64>,
}

pub struct Proxy {
    pub url: String,
    honest: Arc<AtomicBool>,
    pub record: Arc<Mutex<Record>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    plan: Plan,
    url: String,
    upstream: String,
    upstream_uri: String,
    honest: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
}

impl Proxy {
    /// Starts a proxy for `plan` in front of the server at `upstream_uri` (`http://host:port`).
    pub async fn start(plan: Plan, upstream_uri: &str) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let honest = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(Record::default()));
        let shared = Arc::new(Shared {
            plan,
            url: url.clone(),
            upstream: upstream_uri.trim_start_matches("http://").to_owned(),
            upstream_uri: upstream_uri.to_owned(),
            honest: honest.clone(),
            record: record.clone(),
        });
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &shared).await;
                });
            }
        });
        Ok(Proxy {
            url,
            honest,
            record,
            task,
        })
    }

    pub fn turn_honest(&self) {
        self.honest.store(true, Ordering::SeqCst);
    }
}

/// A request or an answer as it travels: its first line, headers and body.
struct Message {
    first: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn remove(&mut self, name: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    fn set(&mut self, name: &str, value: String) {
        self.remove(name);
        self.headers.push((name.to_owned(), value));
    }

    fn head(&self) -> Vec<u8> {
        let mut head = format!("{}\r\n", self.first);
        for (n, v) in &self.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> std::io::Result<Message> {
    let mut first = String::new();
    r.read_line(&mut first).await?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = line.trim_end().split_once(':') {
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok(Message {
        first: first.trim_end().to_owned(),
        headers,
        body: Vec::new(),
    })
}

async fn serve(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request = read_head(&mut reader).await?;
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    request.body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut request.body).await?;
    let mut stream = reader.into_inner();
    let mut parts = request.first.split(' ');
    let method = parts.next().unwrap_or("").to_owned();
    let mut target = parts.next().unwrap_or("/").to_owned();
    let redirected = target.contains("adv-redirect=1");
    if redirected {
        target = target
            .replace("?adv-redirect=1", "")
            .replace("&adv-redirect=1", "");
    }
    let path = target.split('?').next().unwrap_or("").to_owned();
    let kind = Kind::of(&path);
    let act = if shared.honest.load(Ordering::SeqCst) || redirected {
        Act::Pass
    } else {
        let mut record = shared.record.lock().unwrap();
        let n = record.counts.entry(kind).or_insert(0);
        let act = shared.plan.act(kind, &method, *n);
        *n += 1;
        if act != Act::Pass {
            record.acts.push(format!("{method} {path}: {act}"));
        }
        if kind == Kind::Patch && act.spoils_patch(&method) {
            record.spoiled.insert(path.clone());
        }
        act
    };
    request.first = format!("{method} {target} HTTP/1.1");
    if act.answers_alone() {
        return answer_alone(&mut stream, act, &shared.url, &target).await;
    }
    if act == Act::IgnoreRange {
        request.remove("range");
        request.remove("if-range");
    }
    let mut answer = forward(&request, &shared.upstream).await?;
    if kind == Kind::Check {
        let body = String::from_utf8_lossy(&answer.body).replace(&shared.upstream_uri, &shared.url);
        answer.body = body.into_bytes();
        answer.set("Content-Length", answer.body.len().to_string());
    }
    spoil(&mut answer, act, &method, shared.plan.seed);
    send(&mut stream, answer, act, &method).await
}

/// Asks the real server, one request on one connection.
async fn forward(request: &Message, upstream: &str) -> std::io::Result<Message> {
    let mut up = TcpStream::connect(upstream).await?;
    let mut out = Message {
        first: request.first.clone(),
        headers: request.headers.clone(),
        body: Vec::new(),
    };
    out.set("Connection", "close".into());
    out.set("Host", upstream.to_owned());
    up.write_all(&out.head()).await?;
    up.write_all(&request.body).await?;
    let mut reader = BufReader::new(up);
    let mut answer = read_head(&mut reader).await?;
    let mut body = Vec::new();
    reader.read_to_end(&mut body).await?;
    if answer
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        body = unchunk(&body);
        answer.remove("transfer-encoding");
        if !request.first.starts_with("HEAD") {
            answer.set("Content-Length", body.len().to_string());
        }
    }
    answer.body = body;
    answer.set("Connection", "close".into());
    Ok(answer)
}

fn unchunk(mut data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size_line = String::from_utf8_lossy(&data[..end]);
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        data = &data[end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        body.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
    body
}

async fn answer_alone(
    stream: &mut TcpStream,
    act: Act,
    proxy: &str,
    target: &str,
) -> std::io::Result<()> {
    let (status, content_type, body, extra) = match act {
        Act::Reset => return Ok(()),
        Act::Status(s) => (
            s,
            "application/json;charset=UTF-8",
            format!(
                "{{\"timestamp\":\"2026-12-03T00:00:00.000+00:00\",\"status\":{s},\"error\":\"Error\",\"path\":\"{}\"}}",
                target.split('?').next().unwrap_or("")
            ),
            String::new(),
        ),
        Act::Unauthorized { body: true } => (
            401,
            "application/json;charset=UTF-8",
            "{\"error\":\"invalid_token\",\"error_description\":\"Invalid access token: x\"}"
                .into(),
            "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n".into(),
        ),
        Act::Unauthorized { body: false } => (
            401,
            "text/plain",
            String::new(),
            "WWW-Authenticate: Bearer\r\n".into(),
        ),
        Act::Portal => (
            200,
            "text/html",
            "<html><body><form action=\"/login\">Sign in to the Wi-Fi</form></body></html>".into(),
            String::new(),
        ),
        _ => {
            let sep = if target.contains('?') { '&' } else { '?' };
            (
                307,
                "text/plain",
                String::new(),
                format!("Location: {proxy}{target}{sep}adv-redirect=1\r\n"),
            )
        }
    };
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Changes the real answer's headers and body as `act` says.
fn spoil(answer: &mut Message, act: Act, method: &str, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed ^ answer.body.len() as u64);
    let status_ok = answer.first.contains(" 200") || answer.first.contains(" 206");
    match act {
        Act::NoContentType => answer.remove("content-type"),
        Act::WrongContentRange => {
            if let Some(range) = answer.header("content-range").map(str::to_owned) {
                answer.set("Content-Range", shift_range(&range));
            }
        }
        Act::Republished if status_ok => {
            let half = answer.body.len() / 2;
            rng.fill(&mut answer.body[half..]);
            answer.set("ETag", format!("\"republished-{}\"", rng.u32(..)));
            answer.set("Last-Modified", "Thu, 03 Dec 2026 12:00:00 GMT".into());
        }
        Act::Garbage if status_ok => rng.fill(&mut answer.body),
        Act::HugeHeader if status_ok && answer.body.len() >= 32 => {
            answer.body[24..32].copy_from_slice(&(1u64 << 50).to_le_bytes());
        }
        Act::HugeLength => answer.set("Content-Length", (1u64 << 50).to_string()),
        Act::Odd(odd) => answer.body = odd_json(&answer.body, odd),
        Act::LongId => {
            answer.body = rewrite_ids(&answer.body, |id| format!("{id};{}", "7".repeat(300)))
        }
        Act::DuplicateId => {
            answer.body = rewrite_ids(&answer.body, |id| {
                let first = id.split(';').next().unwrap_or("").to_owned();
                format!("{first};{id}")
            })
        }
        Act::LongChain => answer.body = long_chain(&answer.body),
        _ => {}
    }
    if !method.eq_ignore_ascii_case("HEAD") && !matches!(act, Act::HugeLength) {
        answer.set("Content-Length", answer.body.len().to_string());
    }
}

fn shift_range(range: &str) -> String {
    // "bytes a-b/n" -> "bytes (a+1)-(b+1)/n"
    let Some(rest) = range.strip_prefix("bytes ") else {
        return range.to_owned();
    };
    let Some((span, total)) = rest.split_once('/') else {
        return range.to_owned();
    };
    let Some((a, b)) = span.split_once('-') else {
        return range.to_owned();
    };
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => format!("bytes {}-{}/{total}", a + 1, b + 1),
        _ => range.to_owned(),
    }
}

fn odd_json(body: &[u8], odd: OddJson) -> Vec<u8> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return body.to_vec();
    };
    let pairs: Vec<(String, serde_json::Value)> = map.into_iter().collect();
    let text = |pairs: &[(String, serde_json::Value)], sep: &str| {
        let items: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}:{sep}{v}", serde_json::Value::from(k.as_str())))
            .collect();
        format!("{{{sep}{}{sep}}}", items.join(&format!(",{sep}")))
    };
    match odd {
        OddJson::Bom => [b"\xef\xbb\xbf".as_slice(), body].concat(),
        OddJson::Spaces => text(&pairs, "\n  ").into_bytes(),
        OddJson::DuplicateKeys => {
            let mut doubled: Vec<(String, serde_json::Value)> = pairs
                .iter()
                .map(|(k, _)| (k.clone(), serde_json::Value::from("bogus")))
                .collect();
            doubled.extend(pairs.iter().cloned());
            text(&doubled, "").into_bytes()
        }
        OddJson::ExpiresAsString => {
            let pairs: Vec<_> = pairs
                .into_iter()
                .map(|(k, v)| match (&*k, &v) {
                    ("expires_in", serde_json::Value::Number(n)) => {
                        let s = serde_json::Value::from(n.to_string());
                        (k, s)
                    }
                    _ => (k, v),
                })
                .collect();
            text(&pairs, "").into_bytes()
        }
        OddJson::TrailingSeparators => {
            let pairs: Vec<_> = pairs
                .into_iter()
                .map(|(k, v)| match (&*k, v.as_str()) {
                    ("data" | "id", Some(s)) if !s.is_empty() => {
                        let s = serde_json::Value::from(format!("{s};"));
                        (k, s)
                    }
                    _ => (k, v),
                })
                .collect();
            text(&pairs, "").into_bytes()
        }
    }
}

/// Appends 70 patches to an answer's chain, each leading one version further.
fn long_chain(body: &[u8]) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.to_vec();
    };
    let (Some(data), Some(id)) = (value["data"].as_str(), value["id"].as_str()) else {
        return body.to_vec();
    };
    let Some(last) = data.split(';').next_back().filter(|l| !l.is_empty()) else {
        return body.to_vec();
    };
    let Some(base) = last.rsplit_once('/').map(|(b, _)| b.to_owned()) else {
        return body.to_vec();
    };
    let (mut data, mut id) = (data.to_owned(), id.to_owned());
    for k in 0..70 {
        data.push_str(&format!(";{base}/Extra-1--{}--service5mic.patch", 100 + k));
        id.push_str(&format!(";9{k:03}"));
    }
    value["data"] = serde_json::Value::from(data);
    value["id"] = serde_json::Value::from(id);
    serde_json::to_vec(&value).unwrap_or_else(|_| body.to_vec())
}

fn rewrite_ids(body: &[u8], change: impl Fn(&str) -> String) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.to_vec();
    };
    if let Some(id) = value.get("id").and_then(|v| v.as_str()).map(str::to_owned) {
        if !id.is_empty() {
            value["id"] = serde_json::Value::from(change(&id));
        }
    }
    serde_json::to_vec(&value).unwrap_or_else(|_| body.to_vec())
}

/// Writes `answer` the way `act` says.
async fn send(
    stream: &mut TcpStream,
    mut answer: Message,
    act: Act,
    method: &str,
) -> std::io::Result<()> {
    let head_only = method.eq_ignore_ascii_case("HEAD");
    let body = std::mem::take(&mut answer.body);
    let cut = |permille: u64| body.len() * permille as usize / 1000;
    match act {
        Act::CutWithLength { permille } if !head_only => {
            stream.write_all(&answer.head()).await?;
            stream.write_all(&body[..cut(permille)]).await?;
        }
        Act::CutNoLength { permille } if !head_only => {
            answer.remove("content-length");
            stream.write_all(&answer.head()).await?;
            stream.write_all(&body[..cut(permille)]).await?;
        }
        Act::NoLength if !head_only => {
            answer.remove("content-length");
            stream.write_all(&answer.head()).await?;
            stream.write_all(&body).await?;
        }
        Act::Chunked if !head_only => {
            answer.remove("content-length");
            answer.set("Transfer-Encoding", "chunked".into());
            stream.write_all(&answer.head()).await?;
            let mut rng = fastrand::Rng::with_seed(body.len() as u64);
            let mut rest = body.as_slice();
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len().min(4096));
                stream.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                stream.write_all(&rest[..n]).await?;
                stream.write_all(b"\r\n").await?;
                rest = &rest[n..];
            }
            stream.write_all(b"0\r\n\r\n").await?;
        }
        Act::Drip {
            pause_ms,
            then_close,
        } if !head_only => {
            stream.write_all(&answer.head()).await?;
            let started = std::time::Instant::now();
            let mut sent = 0;
            while sent < body.len() && started.elapsed() < Duration::from_millis(1_500) {
                stream.write_all(&body[sent..sent + 1]).await?;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
            if !then_close {
                stream.write_all(&body[sent..]).await?;
            }
        }
        _ => {
            stream.write_all(&answer.head()).await?;
            if !head_only {
                stream.write_all(&body).await?;
            }
        }
    }
    stream.shutdown().await
}
