//! The generated code end to end: typed clients calling `#[handler]`s over
//! loopback TCP through the in-memory registry.

use micro::prelude::*;
use micro::{CallOptions, ContentType, MemoryRegistry, Registry, RunningService};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[micro::message]
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub x: i64,
    pub y: i64,
}

/// Geometry.
#[micro::service(name = "geo", version = "2.1.0")]
pub trait Geo {
    /// Adds two points.
    async fn add(&self, a: Point, b: Point) -> micro::Result<Point>;
    /// The origin.
    async fn origin(&self) -> micro::Result<Point>;
    /// Renamed on the wire.
    #[micro(name = "Norm1")]
    async fn manhattan(&self, p: Point) -> micro::Result<i64>;
    /// Sleeps past any reasonable deadline; records whether it was cancelled.
    async fn stall(&self, ms: u64) -> micro::Result<()>;
    /// Calls `Relay.Echo` from inside a handler.
    async fn relay(
        &self,
        key: String,
    ) -> micro::Result<(Option<String>, Option<u64>, Option<String>)>;
}

struct GeoImpl {
    client: std::sync::OnceLock<Client>,
    stall_finished: Arc<AtomicBool>,
    stall_dropped: Arc<AtomicBool>,
}

struct SetOnDrop(Arc<AtomicBool>);
impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[micro::handler]
impl Geo for GeoImpl {
    async fn add(&self, a: Point, b: Point) -> micro::Result<Point> {
        Ok(Point {
            x: a.x + b.x,
            y: a.y + b.y,
        })
    }
    async fn origin(&self) -> micro::Result<Point> {
        Ok(Point { x: 0, y: 0 })
    }
    async fn manhattan(&self, p: Point) -> micro::Result<i64> {
        Ok(p.x.abs() + p.y.abs())
    }
    async fn stall(&self, ms: u64) -> micro::Result<()> {
        let _on_drop = SetOnDrop(Arc::clone(&self.stall_dropped));
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.stall_finished.store(true, Ordering::SeqCst);
        Ok(())
    }
    async fn relay(
        &self,
        key: String,
    ) -> micro::Result<(Option<String>, Option<u64>, Option<String>)> {
        let client = self.client.get().expect("client set");
        RelayClient::new(client).echo(key).await
    }
}

/// An inherent handler: its `pub async fn`s are endpoints.
#[derive(Debug)]
pub struct Relay;

#[micro::handler(name = "relay")]
impl Relay {
    /// Echoes a metadata value, the remaining deadline in ms, and the trace id.
    pub async fn echo(
        &self,
        key: String,
    ) -> micro::Result<(Option<String>, Option<u64>, Option<String>)> {
        let ctx = Context::current();
        Ok((
            ctx.get(&key).map(str::to_owned),
            ctx.remaining().map(|d| d.as_millis() as u64),
            Some(ctx.trace_id().to_string()),
        ))
    }

    /// Not an endpoint: not `pub`.
    #[allow(dead_code)]
    async fn helper(&self) {}
}

type Flags = (Arc<AtomicBool>, Arc<AtomicBool>);

async fn start(reg: &MemoryRegistry) -> (RunningService, RunningService, Flags) {
    let stall_finished = Arc::new(AtomicBool::new(false));
    let stall_dropped = Arc::new(AtomicBool::new(false));
    let geo = GeoImpl {
        client: Default::default(),
        stall_finished: Arc::clone(&stall_finished),
        stall_dropped: Arc::clone(&stall_dropped),
    };
    let relay = Service::new("relay")
        .address("127.0.0.1:0")
        .registry(Arc::new(reg.clone()))
        .handler(Relay)
        .start()
        .await
        .unwrap();
    geo.client.set(relay.client()).unwrap();
    let geo = Service::new("geo")
        .version("2.1.0")
        .address("127.0.0.1:0")
        .registry(Arc::new(reg.clone()))
        .handler(geo)
        .start()
        .await
        .unwrap();
    (geo, relay, (stall_finished, stall_dropped))
}

#[tokio::test]
async fn generated_clients_call_generated_handlers() {
    let reg = MemoryRegistry::new();
    let (geo_svc, relay_svc, _) = start(&reg).await;
    let client = geo_svc.client();
    let geo = GeoClient::new(&client);
    assert_eq!(GeoClient::SERVICE, "geo");
    let p = geo
        .add(Point { x: 1, y: 2 }, Point { x: 10, y: 20 })
        .await
        .unwrap();
    assert_eq!(p, Point { x: 11, y: 22 });
    assert_eq!(geo.origin().await.unwrap(), Point { x: 0, y: 0 });
    assert_eq!(geo.manhattan(Point { x: -3, y: 4 }).await.unwrap(), 7);

    // The same calls in JSON.
    let json = geo.with_options(CallOptions::new().content_type(ContentType::Json));
    assert_eq!(json.manhattan(Point { x: 1, y: 1 }).await.unwrap(), 2);
    // Several arguments travel as a map named by the arguments.
    let raw = client
        .call_raw(
            "geo",
            "Geo.Add",
            ContentType::Json,
            br#"{"a":{"x":1,"y":1},"b":{"x":2,"y":2}}"#,
            &CallOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(&raw[..], br#"{"x":3,"y":3}"#);

    // Endpoint descriptors, as registered.
    let rec = &reg.get_service("geo").await.unwrap()[0];
    assert_eq!(rec.version, "2.1.0");
    let names: Vec<&str> = rec.endpoints.iter().map(|e| e.name.as_str()).collect();
    for want in [
        "Geo.Add",
        "Geo.Origin",
        "Geo.Norm1",
        "Geo.Stall",
        "Geo.Relay",
        "Debug.Health",
        "Debug.Stats",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let add = rec.endpoints.iter().find(|e| e.name == "Geo.Add").unwrap();
    assert_eq!(add.doc, "Adds two points.");
    assert_eq!(add.response, "Point");
    let relay_rec = &reg.get_service("relay").await.unwrap()[0];
    assert!(relay_rec.endpoints.iter().any(|e| e.name == "Relay.Echo"));
    assert!(!relay_rec.endpoints.iter().any(|e| e.name == "Relay.Helper"));

    geo_svc.stop().await.unwrap();
    relay_svc.stop().await.unwrap();
}

#[tokio::test]
async fn context_is_carried_from_handler_to_the_next_call() {
    let reg = MemoryRegistry::new();
    let (geo_svc, relay_svc, _) = start(&reg).await;
    let geo = GeoClient::new(&geo_svc.client()).with_options(
        CallOptions::new()
            .metadata("tenant", "t-1")
            .metadata("Micro-Trace-Id", "42")
            .timeout(Duration::from_millis(1500)),
    );
    let (tenant, remaining, trace) = geo.relay("tenant".into()).await.unwrap();
    assert_eq!(tenant.as_deref(), Some("t-1"));
    // The trace id set by the first caller reached the second hop.
    assert_eq!(trace.as_deref(), Some(&*format!("{:032x}", 0x42)));
    let remaining = remaining.expect("the deadline travelled");
    assert!(
        remaining <= 1500,
        "the second hop's deadline is bounded by the first: {remaining}"
    );
    geo_svc.stop().await.unwrap();
    relay_svc.stop().await.unwrap();
}

#[tokio::test]
async fn deadline_past_the_handler_times_out_and_cancels_it() {
    let reg = MemoryRegistry::new();
    let (geo_svc, relay_svc, (finished, dropped)) = start(&reg).await;
    let geo = GeoClient::new(&geo_svc.client()).with_timeout(Duration::from_millis(100));
    let e = geo.stall(60_000).await.unwrap_err();
    assert_eq!(e.code, 408, "{e}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !dropped.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the handler's task was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !finished.load(Ordering::SeqCst),
        "the handler ran to completion"
    );
    geo_svc.stop().await.unwrap();
    relay_svc.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_service_is_named() {
    let reg = MemoryRegistry::new();
    let client = Client::with_registry(Arc::new(reg)).unwrap();
    let e = GeoClient::with_service(&client, "atlas")
        .origin()
        .await
        .unwrap_err();
    assert_eq!(e.code, 404);
    assert!(e.detail.contains("`atlas`"), "{e}");
}
