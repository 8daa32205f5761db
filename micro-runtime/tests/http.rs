//! HTTP/JSON and WebSocket on the service's own port, tested with peers
//! written by others: `curl` for HTTP and Python's `websockets` package
//! (through `tests/ws_client.py`) for WebSocket.

mod common;
use common::{settled, wait_until};

use futures_util::StreamExt;
use micro_runtime::server::{
    bidi_streaming, client_streaming, server_streaming, unary, EndpointDef, Handler, Route,
};
use micro_runtime::{Context, Error, MemoryRegistry, RunningService, Service, Streaming};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    name: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Pair {
    a: i32,
    b: i32,
}

#[derive(Default)]
struct Probe {
    slow_started: AtomicUsize,
    slow_dropped: AtomicUsize,
    chats_dropped: AtomicUsize,
    lazy_dropped: AtomicUsize,
    flood_produced: AtomicUsize,
    flood_dropped: AtomicUsize,
}

struct OnDrop<'a>(&'a AtomicUsize);
impl Drop for OnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Counts into `Probe::$field` when dropped; owns its probe.
struct Guard(Arc<Probe>, fn(&Probe) -> &AtomicUsize);
impl Drop for Guard {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_add(1, Ordering::SeqCst);
    }
}

struct Svc(Arc<Probe>);

fn def(name: &'static str) -> EndpointDef {
    EndpointDef {
        name,
        request: "Hello",
        response: "String",
        doc: "A test endpoint.",
    }
}

impl Handler for Svc {
    fn routes(self: Arc<Self>) -> Vec<Route> {
        vec![
            unary(
                def("Svc.Hello"),
                Arc::clone(&self),
                |_s, req: Hello| async move { Ok(format!("Hello, {}", req.name)) },
            ),
            unary(
                def("Svc.Add"),
                Arc::clone(&self),
                |_s, p: Pair| async move { Ok(p.a + p.b) },
            ),
            unary(
                def("Svc.Fail"),
                Arc::clone(&self),
                |_s, (): ()| async move { Err::<(), _>(Error::conflict("svc", "already exists")) },
            ),
            unary(
                def("Svc.Meta"),
                Arc::clone(&self),
                |_s, key: String| async move {
                    let ctx = Context::current();
                    let value = match key.as_str() {
                        "trace" => Some(ctx.trace_id().to_string()),
                        key => ctx.get(key).map(str::to_owned),
                    };
                    Ok((value, ctx.remaining().map(|d| d.as_millis() as u64)))
                },
            ),
            unary(
                def("Svc.Slow"),
                Arc::clone(&self),
                |s, ms: u64| async move {
                    let probe = Arc::clone(&s.0);
                    probe.slow_started.fetch_add(1, Ordering::SeqCst);
                    let _guard = OnDrop(&probe.slow_dropped);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(ms)
                },
            ),
            server_streaming(
                def("Svc.Countdown"),
                Arc::clone(&self),
                |_s, from: u32| async move { Ok(Streaming::iter((1..=from).rev())) },
            ),
            server_streaming(
                def("Svc.Explode"),
                Arc::clone(&self),
                |_s, (): ()| async move {
                    let items: Vec<micro_runtime::Result<u32>> =
                        vec![Ok(1), Ok(2), Err(Error::conflict("svc", "went wrong at 3"))];
                    Ok(Streaming::try_new(futures_util::stream::iter(items)))
                },
            ),
            client_streaming(
                def("Svc.Sum"),
                Arc::clone(&self),
                |_s, mut nums: Streaming<i64>| async move {
                    let mut total = 0;
                    while let Some(n) = nums.message().await? {
                        total += n;
                    }
                    Ok(total)
                },
            ),
            bidi_streaming(
                def("Svc.Chat"),
                Arc::clone(&self),
                |s, inbound: Streaming<Value>| async move {
                    let guard = Guard(Arc::clone(&s.0), |p| &p.chats_dropped);
                    Ok(Streaming::try_new(inbound.map(move |item| {
                        let _keep = &guard;
                        item.map(|v| json!({ "echo": v }))
                    })))
                },
            ),
            server_streaming(
                def("Svc.Flood"),
                Arc::clone(&self),
                |s, (): ()| async move {
                    // Endless items of 64 KiB, as fast as they are taken.
                    let guard = Guard(Arc::clone(&s.0), |p| &p.flood_dropped);
                    let item = "x".repeat(64 * 1024);
                    Ok(Streaming::new(futures_util::stream::repeat(item).map(
                        move |item| {
                            guard.0.flood_produced.fetch_add(1, Ordering::SeqCst);
                            item
                        },
                    )))
                },
            ),
            bidi_streaming(
                def("Svc.Lazy"),
                self,
                |s, inbound: Streaming<Value>| async move {
                    // Never reads its input: the client must be held back.
                    let guard = Guard(Arc::clone(&s.0), |p| &p.lazy_dropped);
                    Ok(Streaming::new(futures_util::stream::pending::<u32>().map(
                        move |x| {
                            let _keep = (&guard, &inbound);
                            x
                        },
                    )))
                },
            ),
        ]
    }
}

async fn start(max_frame: Option<usize>) -> (RunningService, Arc<Probe>, String) {
    let probe = Arc::new(Probe::default());
    let mut svc = Service::new("svc")
        .address("127.0.0.1:0")
        .registry(Arc::new(MemoryRegistry::new()))
        .grace_period(Duration::from_secs(1))
        .handler(Svc(Arc::clone(&probe)));
    if let Some(max) = max_frame {
        svc = svc.max_frame(max);
    }
    let svc = svc.start().await.unwrap();
    let addr = svc.local_addr().to_string();
    (svc, probe, addr)
}

/// Runs a command off the runtime (the server shares it) and returns its stdout.
async fn run(program: &str, args: Vec<String>) -> String {
    let shown = format!("{program} {}", args.join(" "));
    let program = program.to_owned();
    let out = tokio::task::spawn_blocking(move || Command::new(&program).args(&args).output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("could not run `{shown}`: {e}"));
    assert!(
        out.status.success(),
        "`{shown}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An HTTP answer as curl saw it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
}

/// One request with curl (`-i`, 10 s at most) plus `args`.
async fn curl(args: &[&str]) -> Answer {
    let mut all: Vec<String> = ["-sS", "-i", "--max-time", "10"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(args.iter().map(|s| s.to_string()));
    let out = run("/usr/bin/curl", all).await;
    // Skip interim (1xx) heads, such as `100 Continue`.
    let mut rest = out.as_str();
    loop {
        let (head, body) = rest.split_once("\r\n\r\n").expect("a head");
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        return Answer {
            status,
            headers,
            body: body.to_owned(),
        };
    }
}

fn error(status: u16, body: &Value) -> (u16, u16, String) {
    (
        status,
        body["code"].as_u64().unwrap() as u16,
        body["detail"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn curl_calls_unary_endpoints_with_errors_metadata_and_deadlines() {
    let (svc, probe, addr) = start(None).await;
    let url = |e: &str| format!("http://{addr}/{e}");

    // The README's command: `curl -d` (which says form-urlencoded) works.
    let a = curl(&["-d", r#"{"name":"Alice"}"#, &url("Svc.Hello")]).await;
    assert_eq!((a.status, a.body.as_str()), (200, r#""Hello, Alice""#));
    assert_eq!(a.header("content-type"), "application/json");
    assert_eq!(a.header("micro-trace-id").len(), 32);
    let a = curl(&[
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"a":2,"b":3}"#,
        &url("Svc.Add"),
    ])
    .await;
    assert_eq!((a.status, a.body.as_str()), (200, "5"));

    // A handler's error: its code as the status, the error as JSON.
    let a = curl(&["-X", "POST", &url("Svc.Fail")]).await;
    assert_eq!(a.status, 409);
    assert_eq!(a.header("content-type"), "application/json");
    assert_eq!(
        a.json(),
        json!({"id": "svc", "code": 409, "detail": "already exists", "status": "Conflict"})
    );

    // Metadata from headers (names in lower case), the trace id both ways.
    let a = curl(&["-H", "X-User: alice", "-d", r#""x-user""#, &url("Svc.Meta")]).await;
    assert_eq!(a.json(), json!(["alice", null]));
    let trace = "0123456789abcdef0123456789abcdef";
    let a = curl(&[
        "-H",
        &format!("Micro-Trace-Id: {trace}"),
        "-d",
        r#""trace""#,
        &url("Svc.Meta"),
    ])
    .await;
    assert_eq!(a.json()[0], trace);
    assert_eq!(a.header("micro-trace-id"), trace);
    // Standard headers are not metadata.
    let a = curl(&["-d", r#""user-agent""#, &url("Svc.Meta")]).await;
    assert_eq!(a.json(), json!([null, null]));
    // The deadline reaches the handler's context.
    let a = curl(&["-H", "Micro-Timeout: 2s", "-d", r#""x""#, &url("Svc.Meta")]).await;
    let left = a.json()[1].as_u64().expect("a deadline");
    assert!(left > 0 && left <= 2000, "{left}");

    // The deadline bounds the call: 408, and the handler is dropped.
    let a = curl(&["-H", "Micro-Timeout: 50ms", "-d", "10000", &url("Svc.Slow")]).await;
    assert_eq!(error(a.status, &a.json()).0, 408);
    assert_eq!(a.json()["code"], 408);
    wait_until("the timed-out handler to be dropped", || {
        probe.slow_dropped.load(Ordering::SeqCst) == 1
    })
    .await;

    // Bad deadline and trace headers.
    for (header, what) in [
        ("Micro-Timeout: soon", "Micro-Timeout"),
        ("Micro-Timeout: 99999999999999999999h", "Micro-Timeout"),
        ("Micro-Trace-Id: xyz", "Micro-Trace-Id"),
    ] {
        let a = curl(&["-H", header, "-d", "1", &url("Svc.Slow")]).await;
        let (status, code, detail) = error(a.status, &a.json());
        assert_eq!((status, code), (400, 400), "{header}");
        assert!(detail.contains(what), "{detail}");
    }

    // A caller that goes away cancels its call.
    let mut args: Vec<String> = ["-sS", "--max-time", "0.5", "-d", "10000"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(url("Svc.Slow"));
    let gone = tokio::task::spawn_blocking(move || {
        Command::new("/usr/bin/curl").args(&args).output().unwrap()
    })
    .await
    .unwrap();
    assert!(!gone.status.success(), "curl should have timed out");
    wait_until("the abandoned handler to be dropped", || {
        probe.slow_dropped.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(probe.slow_started.load(Ordering::SeqCst), 2);

    let stats = svc.stats();
    assert!(stats.errors >= 5 && stats.requests >= 10, "{stats:?}");
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_answered_and_the_server_keeps_serving() {
    let (svc, _, addr) = start(Some(256)).await;
    let url = |e: &str| format!("http://{addr}/{e}");
    let check = |a: &Answer, status: u16, says: &str| {
        let body = a.json();
        let (got, code, detail) = error(a.status, &body);
        assert_eq!((got, code), (status, status), "{a:?}");
        assert!(detail.contains(says), "`{detail}` should say `{says}`");
        assert_eq!(a.header("content-type"), "application/json");
        assert!(
            body["id"].is_string() && body["status"].is_string(),
            "{body}"
        );
    };

    let a = curl(&["-d", r#"{"name":"#, &url("Svc.Hello")]).await;
    check(&a, 400, "malformed json");
    let a = curl(&["-d", r#"{"a":"two","b":3}"#, &url("Svc.Add")]).await;
    check(&a, 400, "invalid type");
    let a = curl(&["-d", "{}", &url("Svc.Nope")]).await;
    check(&a, 404, "Svc.Nope");
    assert!(a.body.contains("Svc.Hello") && a.body.contains("Debug.Health"));
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(1000));
    let a = curl(&["-d", &big, &url("Svc.Hello")]).await;
    check(&a, 413, "256 bytes");
    // Chunked: no length to refuse up front, the read is bounded instead.
    let a = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "-d",
        &big,
        &url("Svc.Hello"),
    ])
    .await;
    check(&a, 413, "256 bytes");
    let a = curl(&[&url("Svc.Hello")]).await;
    check(&a, 405, "POST");
    assert_eq!(a.header("allow"), "POST");
    let a = curl(&["-X", "PUT", "-d", "{}", &url("Svc.Hello")]).await;
    check(&a, 405, "POST");
    let a = curl(&[
        "-H",
        "Content-Type: text/plain",
        "-d",
        "{}",
        &url("Svc.Hello"),
    ])
    .await;
    check(&a, 415, "text/plain");
    let a = curl(&["-d", "1", &url("Svc.Chat")]).await;
    check(&a, 400, "WebSocket");
    let a = curl(&["-X", "DELETE", &format!("http://{addr}/")]).await;
    check(&a, 405, "GET");

    // A good call on the same server still works...
    let a = curl(&["-d", r#"{"name":"Eve"}"#, &url("Svc.Hello")]).await;
    assert_eq!((a.status, a.body.as_str()), (200, r#""Hello, Eve""#));
    // ...and on the same connection after errors: curl reuses it (0 new connects).
    let line = "%{http_code} %{num_connects}\\n";
    let mut args: Vec<String> = vec!["-sS".into(), "--max-time".into(), "10".into()];
    for (body, endpoint) in [
        (r#"{"name":"#, "Svc.Hello"),
        ("{}", "Svc.Nope"),
        (r#"{"a":"x"}"#, "Svc.Add"),
        (r#"{"name":"Eve"}"#, "Svc.Hello"),
    ] {
        if args.len() > 3 {
            args.push("--next".into());
        }
        args.extend(["-o", "/dev/null", "-w", line, "-d", body].map(String::from));
        args.push(url(endpoint));
    }
    let out = run("/usr/bin/curl", args).await;
    assert_eq!(
        out, "400 1\n404 0\n400 0\n200 0\n",
        "one kept-alive connection"
    );
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn get_root_lists_the_endpoints() {
    let (svc, _, addr) = start(None).await;
    let a = curl(&[&format!("http://{addr}/")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), "application/json");
    let listing = a.json();
    assert_eq!(listing["service"], "svc");
    let endpoints = listing["endpoints"].as_array().unwrap();
    let names: Vec<&str> = endpoints
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    assert!(names.contains(&"Debug.Health") && names.contains(&"Svc.Hello"));
    let find = |n: &str| endpoints.iter().find(|e| e["name"] == n).unwrap().clone();
    assert_eq!(
        find("Svc.Hello"),
        json!({"name": "Svc.Hello", "request": "Hello", "response": "String",
               "doc": "A test endpoint.", "stream": "unary"})
    );
    assert_eq!(find("Svc.Countdown")["stream"], "server");
    assert_eq!(find("Svc.Sum")["stream"], "client");
    assert_eq!(find("Svc.Chat")["stream"], "bidi");
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn server_streaming_over_http_is_ndjson() {
    let (svc, _, addr) = start(None).await;
    let a = curl(&["-N", "-d", "3", &format!("http://{addr}/Svc.Countdown")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), "application/x-ndjson");
    assert_eq!(a.header("transfer-encoding"), "chunked");
    assert_eq!(a.body, "3\n2\n1\n");
    let a = curl(&["-X", "POST", &format!("http://{addr}/Svc.Explode")]).await;
    assert_eq!(a.status, 200);
    let lines: Vec<Value> = a
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            json!(1),
            json!(2),
            json!({"error": {"id": "svc", "code": 409, "detail": "went wrong at 3", "status": "Conflict"}})
        ]
    );
    // An error before the stream opens is a plain HTTP error.
    let a = curl(&["-d", r#""three""#, &format!("http://{addr}/Svc.Countdown")]).await;
    assert_eq!(a.status, 400);
    svc.stop().await.unwrap();
}

/// What the Python WebSocket client saw.
#[derive(Debug, Deserialize)]
struct WsRun {
    received: Vec<String>,
    close_code: Option<u16>,
    close_reason: Option<String>,
}

async fn python_ws(url: String, mode: &str, messages: Value, headers: &[&str]) -> String {
    let has_websockets = Command::new("python3")
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_websockets,
        "these tests need python3 with the `websockets` package: \
         python3 -m pip install 'websockets>=12'"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ws_client.py");
    let mut args = vec![
        script.to_owned(),
        url,
        mode.to_owned(),
        messages.to_string(),
    ];
    args.extend(headers.iter().map(|h| h.to_string()));
    run("python3", args).await
}

async fn ws(url: String, mode: &str, messages: Value, headers: &[&str]) -> WsRun {
    let out = python_ws(url, mode, messages, headers).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad client output ({e}): {out}"))
}

fn parse(items: &[String]) -> Vec<Value> {
    items
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect()
}

#[tokio::test]
async fn websocket_streams_in_every_shape() {
    let (svc, probe, addr) = start(None).await;
    let url = |e: &str| format!("ws://{addr}/{e}");

    // Bidirectional: three items, three echoes, then the client closes,
    // which cancels the handler.
    let r = ws(
        url("Svc.Chat"),
        "echo",
        json!([r#"{"n":1}"#, r#""two""#, "[3]"]),
        &[],
    )
    .await;
    assert_eq!(
        parse(&r.received),
        vec![
            json!({"echo": {"n": 1}}),
            json!({"echo": "two"}),
            json!({"echo": [3]})
        ]
    );
    assert_eq!(r.close_code, Some(1000));
    wait_until("the chat handler to be dropped", || {
        probe.chats_dropped.load(Ordering::SeqCst) == 1
    })
    .await;

    // Bidirectional, ended by the client's empty message: the server ends too.
    let r = ws(url("Svc.Chat"), "drain", json!(["1", "2", ""]), &[]).await;
    assert_eq!(
        parse(&r.received),
        vec![json!({"echo": 1}), json!({"echo": 2})]
    );
    assert_eq!(r.close_code, Some(1000));

    // Server streaming: the first message is the argument.
    let r = ws(url("Svc.Countdown"), "drain", json!(["3"]), &[]).await;
    assert_eq!(r.received, vec!["3", "2", "1"]);
    assert_eq!(r.close_code, Some(1000));

    // Client streaming: items, the empty message, one reply, a normal close.
    let r = ws(url("Svc.Sum"), "drain", json!(["1", "2", "39", ""]), &[]).await;
    assert_eq!(r.received, vec!["42"]);
    assert_eq!(r.close_code, Some(1000));

    // Unary: one message each way; headers become metadata.
    let r = ws(url("Svc.Hello"), "drain", json!([r#"{"name":"Ann"}"#]), &[]).await;
    assert_eq!(r.received, vec![r#""Hello, Ann""#]);
    assert_eq!(r.close_code, Some(1000));
    let r = ws(
        url("Svc.Meta"),
        "drain",
        json!([r#""x-user""#]),
        &["X-User=bo"],
    )
    .await;
    assert_eq!(parse(&r.received), vec![json!(["bo", null])]);
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_errors_close_with_4000_plus_code() {
    let (svc, probe, addr) = start(Some(64 * 1024)).await;
    let url = |e: &str| format!("ws://{addr}/{e}");
    let failed = |r: &WsRun, code: u16, says: &str| {
        let items = parse(&r.received);
        let e = items
            .last()
            .unwrap_or_else(|| panic!("no error message: {r:?}"));
        assert_eq!(e["code"], code, "{r:?}");
        assert!(
            e["detail"].as_str().unwrap().contains(says),
            "`{}` should say `{says}`",
            e["detail"]
        );
        assert!(e["id"].is_string() && e["status"].is_string(), "{e}");
        assert_eq!(r.close_code, Some(4000 + code), "{r:?}");
        assert_eq!(r.close_reason.as_deref(), e["status"].as_str());
    };

    let r = ws(url("Svc.Nope"), "drain", json!([]), &[]).await;
    failed(&r, 404, "Svc.Chat");
    // Mid-stream, from the handler: the items before it arrive first.
    let r = ws(url("Svc.Explode"), "drain", json!([""]), &[]).await;
    assert_eq!(r.received.len(), 3);
    failed(&r, 409, "went wrong at 3");
    let r = ws(url("Svc.Fail"), "drain", json!([""]), &[]).await;
    failed(&r, 409, "already exists");
    // Inbound items that are not JSON, binary messages, wrong types.
    let r = ws(url("Svc.Chat"), "drain", json!(["1", "{oops"]), &[]).await;
    failed(&r, 400, "not JSON");
    let r = ws(url("Svc.Chat"), "drain", json!([{"binary": "1"}]), &[]).await;
    failed(&r, 415, "binary");
    let r = ws(url("Svc.Sum"), "drain", json!([r#""one""#]), &[]).await;
    failed(&r, 400, "undecodable");
    let r = ws(url("Svc.Slow"), "drain", json!(["5000", "2"]), &[]).await;
    failed(&r, 400, "one request message");
    let big = format!("\"{}\"", "x".repeat(100 * 1024));
    let r = ws(url("Svc.Chat"), "drain", json!([big]), &[]).await;
    failed(&r, 413, "65536 bytes");
    let r = ws(
        url("Svc.Hello"),
        "drain",
        json!([]),
        &["Micro-Timeout=never"],
    )
    .await;
    failed(&r, 400, "Micro-Timeout");
    let r = ws(url("Svc.Chat"), "drain", json!([]), &["Micro-Trace-Id=xyz"]).await;
    failed(&r, 400, "Micro-Trace-Id");
    let r = ws(
        url("Svc.Slow"),
        "drain",
        json!(["5000"]),
        &["Micro-Timeout=50ms"],
    )
    .await;
    failed(&r, 408, "deadline");

    // The server still serves.
    let r = ws(url("Svc.Chat"), "echo", json!(["7"]), &[]).await;
    assert_eq!(r.received, vec![r#"{"echo":7}"#]);
    // The handlers of the failed calls are gone (one may not have started).
    wait_until("the slow handlers to be dropped", || {
        let started = probe.slow_started.load(Ordering::SeqCst);
        started >= 1 && probe.slow_dropped.load(Ordering::SeqCst) == started
    })
    .await;
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_clients_that_vanish_are_noticed_and_input_is_flow_controlled() {
    let (svc, probe, addr) = start(None).await;
    // A client that leaves without a close frame cancels its handler.
    let r = ws(format!("ws://{addr}/Svc.Chat"), "vanish", json!(["1"]), &[]).await;
    assert_eq!(r.received, vec![r#"{"echo":1}"#]);
    wait_until("the abandoned chat handler to be dropped", || {
        probe.chats_dropped.load(Ordering::SeqCst) == 1
    })
    .await;

    // 4000 items of 64 KiB (250 MiB) to a handler that reads none: the server
    // stops reading after its window, and sending stalls.
    let count = 4000;
    let out = python_ws(
        format!("ws://{addr}/Svc.Lazy"),
        "flood",
        json!([count, 64 * 1024]),
        &[],
    )
    .await;
    let sent = serde_json::from_str::<Value>(&out).unwrap()["sent"]
        .as_u64()
        .unwrap();
    eprintln!("flood: {sent} of {count} items went out before sending stalled");
    assert!(
        sent < count / 4,
        "{sent} of {count} items went out: the server read without bound"
    );
    assert_eq!(probe.lazy_dropped.load(Ordering::SeqCst), 0);

    // A client that reads nothing holds the server's stream back.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ws_client.py");
    let mut stalled = std::process::Command::new("python3")
        .args([
            script,
            &format!("ws://{addr}/Svc.Flood"),
            "stall",
            r#"[""]"#,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdout = stalled.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut stdout, &mut buf).map(|()| buf)
    })
    .await
    .unwrap();
    assert_eq!(&line.expect("the stalling client's output"), b"sent\n");
    wait_until("the flood to start", || {
        probe.flood_produced.load(Ordering::SeqCst) > 0
    })
    .await;
    let produced = settled(&probe.flood_produced).await;
    assert!(produced < 1000, "{produced} items of 64 KiB produced");

    // Unread input hides the lazy client's leaving, and the flood's client
    // reads nothing: shutdown ends both sessions.
    svc.stop().await.unwrap();
    wait_until("the lazy and flood handlers to be dropped", || {
        probe.lazy_dropped.load(Ordering::SeqCst) == 1
            && probe.flood_dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    stalled.kill().unwrap();
    stalled.wait().unwrap();
}
