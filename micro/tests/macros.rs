//! What the generated code does, without a network: routes are called
//! directly with encoded bodies, as the server would call them.

use micro::server::{Handler, Request, Route};
use micro::ContentType;
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
