//! What the generated code does: routes are called directly with encoded
//! bodies, as the server would call them; streaming endpoints are served
//! in-process and called through the generated clients.

use micro::prelude::*;
use micro::server::{Handler, Request, Route};
use micro::{ContentType, MemoryRegistry, RunningService};
use std::sync::Arc;

#[micro::message]
#[derive(Debug, PartialEq)]
pub struct Point {
    pub x: i64,
    pub y: i64,
}

/// Geometry.
#[micro::service(name = "geo")]
pub trait Geo {
    /// The origin.
    async fn origin(&self) -> micro::Result<Point>;
    /// Mirrors a point.
    async fn mirror(&self, p: Point) -> micro::Result<Point>;
    /// Builds a point.
    #[micro(name = "Make")]
    async fn make_point(&self, x: i64, y: i64) -> micro::Result<Point>;
    /// Fails.
    async fn fail(&self) -> micro::Result<()> {
        Err(micro::Error::bad_request("geo", "always fails"))
    }
}

struct MyGeo;

#[micro::handler]
impl Geo for MyGeo {
    async fn origin(&self) -> micro::Result<Point> {
        Ok(Point { x: 0, y: 0 })
    }
    async fn mirror(&self, p: Point) -> micro::Result<Point> {
        Ok(Point { x: -p.x, y: -p.y })
    }
    async fn make_point(&self, x: i64, y: i64) -> micro::Result<Point> {
        Ok(Point { x, y })
    }
}

struct Counter {
    step: i64,
}

#[micro::handler]
impl Counter {
    /// Adds `step * n` to `base`.
    pub async fn add(&self, base: i64, n: i64) -> micro::Result<i64> {
        Ok(base + self.step * n)
    }
}

fn route<'a>(routes: &'a [Route], name: &str) -> &'a Route {
    routes
        .iter()
        .find(|r| r.endpoint.name == name)
        .unwrap_or_else(|| panic!("no route {name}"))
}

fn unary_fn(route: &Route) -> &micro::server::UnaryFn {
    match &route.call {
        micro::server::Call::Unary(f) => f,
        other => panic!("{} is not unary: {other:?}", route.name),
    }
}

async fn call_json(routes: &[Route], name: &str, body: &str) -> micro::Result<String> {
    let request = Request {
        content_type: ContentType::Json,
        body: body.as_bytes().to_vec().into(),
    };
    let reply = unary_fn(route(routes, name))(request).await?;
    Ok(String::from_utf8(reply.body().to_vec()).unwrap())
}

#[tokio::test]
async fn arguments_are_encoded_by_count() {
    let routes = Handler::routes(Arc::new(MyGeo));
    // No argument: `null`/unit body.
    assert_eq!(
        call_json(&routes, "Geo.Origin", "null").await.unwrap(),
        r#"{"x":0,"y":0}"#
    );
    // One argument: the value itself.
    assert_eq!(
        call_json(&routes, "Geo.Mirror", r#"{"x":1,"y":2}"#)
            .await
            .unwrap(),
        r#"{"x":-1,"y":-2}"#
    );
    // Several arguments: an object keyed by argument name.
    assert_eq!(
        call_json(&routes, "Geo.Make", r#"{"x":3,"y":4}"#)
            .await
            .unwrap(),
        r#"{"x":3,"y":4}"#
    );
}

#[tokio::test]
async fn msgpack_round_trip() {
    let routes = Handler::routes(Arc::new(MyGeo));
    let body = ContentType::MsgPack.encode(&Point { x: 5, y: 6 }).unwrap();
    let request = Request {
        content_type: ContentType::MsgPack,
        body: body.into(),
    };
    let reply = unary_fn(route(&routes, "Geo.Mirror"))(request)
        .await
        .unwrap();
    let point: Point = ContentType::MsgPack.decode(reply.body()).unwrap();
    assert_eq!(point, Point { x: -5, y: -6 });
}

#[tokio::test]
async fn errors_and_bad_bodies() {
    let routes = Handler::routes(Arc::new(MyGeo));
    assert!(call_json(&routes, "Geo.Fail", "null").await.is_err());
    assert!(call_json(&routes, "Geo.Make", r#"{"x":3}"#).await.is_err());
    assert!(call_json(&routes, "Geo.Mirror", "[1,2,3").await.is_err());
}

#[tokio::test]
async fn inherent_handler_routes() {
    let routes = Handler::routes(Arc::new(Counter { step: 10 }));
    assert_eq!(routes.len(), 1);
    assert_eq!(
        call_json(&routes, "Counter.Add", r#"{"base":1,"n":2}"#)
            .await
            .unwrap(),
        "21"
    );
}

#[test]
fn endpoint_descriptions() {
    let routes = Handler::routes(Arc::new(MyGeo));
    let described: Vec<(&str, &str, &str, &str)> = routes
        .iter()
        .map(|r| {
            let e = &r.endpoint;
            (
                e.name.as_str(),
                e.request.as_str(),
                e.response.as_str(),
                e.doc.as_str(),
            )
        })
        .collect();
    assert_eq!(
        described,
        [
            ("Geo.Origin", "()", "Point", "The origin."),
            ("Geo.Mirror", "Point", "Point", "Mirrors a point."),
            ("Geo.Make", "(x: i64, y: i64)", "Point", "Builds a point."),
            ("Geo.Fail", "()", "()", "Fails."),
        ]
    );
    assert_eq!(GeoClient::SERVICE, "geo");
    assert_eq!(GeoClient::VERSION, "latest");
    assert_eq!(CounterClient::SERVICE, "counter");
}

/// One chat line.
#[micro::message]
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub from: String,
    pub text: String,
}

/// Every shape of endpoint.
#[micro::service(name = "shapes")]
pub trait Shapes {
    /// Counts down from `from` to 1.
    async fn countdown(&self, from: u32) -> micro::Result<micro::Streaming<u32>>;
    /// Counts down from `from`, failing with a 409 instead of sending `fail_at`.
    async fn count_to_failure(&self, from: u32, fail_at: u32) -> micro::Result<Streaming<u32>>;
    /// Adds up the numbers sent.
    async fn sum(&self, nums: micro::Streaming<i64>) -> micro::Result<i64>;
    /// Echoes each line back from `echo`.
    async fn chat(
        &self,
        inbound: ::micro::Streaming<Line>,
    ) -> micro::Result<::micro::Streaming<Line>>;
    /// A plain call.
    async fn ping(&self) -> micro::Result<String>;
}

struct MyShapes;

#[micro::handler]
impl Shapes for MyShapes {
    async fn countdown(&self, from: u32) -> micro::Result<micro::Streaming<u32>> {
        Ok(Streaming::iter((1..=from).rev()))
    }
    async fn count_to_failure(&self, from: u32, fail_at: u32) -> micro::Result<Streaming<u32>> {
        let (tx, items) = Streaming::channel(1);
        tokio::spawn(async move {
            for n in (1..=from).rev() {
                let sent = if n == fail_at {
                    tx.fail(micro::Error::conflict("shapes", format!("refusing {n}")))
                        .await
                } else {
                    tx.send(n).await
                };
                if sent.is_err() || n == fail_at {
                    return;
                }
            }
        });
        Ok(items)
    }
    async fn sum(&self, mut nums: micro::Streaming<i64>) -> micro::Result<i64> {
        let mut total = 0;
        while let Some(n) = nums.message().await? {
            total += n;
        }
        Ok(total)
    }
    async fn chat(
        &self,
        inbound: ::micro::Streaming<Line>,
    ) -> micro::Result<::micro::Streaming<Line>> {
        Ok(Streaming::try_new(inbound.map(|line| {
            let line = line?;
            Ok(Line {
                from: "echo".into(),
                text: line.text,
            })
        })))
    }
    async fn ping(&self) -> micro::Result<String> {
        Ok("pong".into())
    }
}

/// An inherent handler with a server-streaming endpoint.
struct Ticker;

#[micro::handler(name = "shapes")]
impl Ticker {
    /// `count` ticks, each `prefix` followed by its number.
    pub async fn ticks(&self, prefix: String, count: u32) -> micro::Result<Streaming<String>> {
        Ok(Streaming::iter(
            (1..=count).map(move |n| format!("{prefix}{n}")),
        ))
    }
}

/// Serves `MyShapes` and `Ticker` as the `shapes` service on loopback.
async fn serve_shapes() -> RunningService {
    Service::new("shapes")
        .address("127.0.0.1:0")
        .registry(Arc::new(MemoryRegistry::new()))
        .handler(MyShapes)
        .handler(Ticker)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn streaming_endpoints_through_the_generated_client() {
    let service = serve_shapes().await;
    let shapes = ShapesClient::new(&service.client());

    let countdown = shapes.countdown(3).await.unwrap();
    assert_eq!(countdown.collect_all().await.unwrap(), [3, 2, 1]);

    let total = shapes.sum(Streaming::iter(vec![1, 2, 3])).await.unwrap();
    assert_eq!(total, 6);

    let (lines, outbound) = Streaming::channel(4);
    let mut replies = shapes.chat(outbound).await.unwrap();
    for text in ["hello", "bye"] {
        lines
            .send(Line {
                from: "alice".into(),
                text: text.into(),
            })
            .await
            .unwrap();
        let reply = replies.message().await.unwrap().unwrap();
        assert_eq!(
            reply,
            Line {
                from: "echo".into(),
                text: text.into()
            }
        );
    }
    drop(lines);
    assert_eq!(replies.message().await.unwrap(), None);

    assert_eq!(shapes.ping().await.unwrap(), "pong");

    let ticks = TickerClient::new(&service.client())
        .ticks("t".into(), 2)
        .await
        .unwrap();
    assert_eq!(ticks.collect_all().await.unwrap(), ["t1", "t2"]);

    service.stop().await.unwrap();
}

#[tokio::test]
async fn a_handler_error_mid_stream_arrives_as_an_err_item() {
    let service = serve_shapes().await;
    let shapes = ShapesClient::new(&service.client());
    let mut items = shapes.count_to_failure(5, 3).await.unwrap();
    assert_eq!(items.message().await.unwrap(), Some(5));
    assert_eq!(items.message().await.unwrap(), Some(4));
    let error = items.message().await.unwrap_err();
    assert_eq!(error.code, 409, "{error:?}");
    assert_eq!(error.detail, "refusing 3");
    service.stop().await.unwrap();
}

#[test]
fn streaming_endpoint_descriptions() {
    let mut routes = Handler::routes(Arc::new(MyShapes));
    routes.extend(Handler::routes(Arc::new(Ticker)));
    let described: Vec<(&str, &str, &str, Option<&str>)> = routes
        .iter()
        .map(|r| {
            let e = &r.endpoint;
            (
                e.name.as_str(),
                e.request.as_str(),
                e.response.as_str(),
                e.metadata.get("stream").map(String::as_str),
            )
        })
        .collect();
    assert_eq!(
        described,
        [
            (
                "Shapes.Countdown",
                "u32",
                "micro::Streaming<u32>",
                Some("server")
            ),
            (
                "Shapes.CountToFailure",
                "(from: u32, fail_at: u32)",
                "Streaming<u32>",
                Some("server")
            ),
            ("Shapes.Sum", "micro::Streaming<i64>", "i64", Some("client")),
            (
                "Shapes.Chat",
                "::micro::Streaming<Line>",
                "::micro::Streaming<Line>",
                Some("bidi")
            ),
            ("Shapes.Ping", "()", "String", None),
            (
                "Ticker.Ticks",
                "(prefix: String, count: u32)",
                "Streaming<String>",
                Some("server")
            ),
        ]
    );
    assert_eq!(TickerClient::SERVICE, "shapes");
}
