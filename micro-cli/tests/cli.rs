//! The `micro` binary against a live service found by mDNS (confined to `lo`,
//! on a port of this test's own).

use micro::prelude::*;
use micro::{MdnsOptions, MdnsRegistry};
use std::process::Command;
use std::sync::Arc;

/// Adds numbers.
#[micro::service(name = "calc")]
trait Calc {
    /// Adds two numbers.
    async fn add(&self, a: i64, b: i64) -> micro::Result<i64>;
    /// Counts from 1 to `to`, failing past 100.
    async fn count(&self, to: u32) -> micro::Result<micro::Streaming<u32>>;
}

struct CalcImpl;

#[micro::handler]
impl Calc for CalcImpl {
    async fn add(&self, a: i64, b: i64) -> micro::Result<i64> {
        Ok(a + b)
    }

    async fn count(&self, to: u32) -> micro::Result<micro::Streaming<u32>> {
        let items = (1..=to).map(|n| {
            if n > 100 {
                Err(Error::bad_request("calc", "counting past 100"))
            } else {
                Ok(n)
            }
        });
        Ok(Streaming::try_new(micro::stream::iter(items)))
    }
}

fn micro(port: u16, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_micro"))
        .args(args)
        .env("MICRO_REGISTRY", "mdns")
        .env("MICRO_MDNS_INTERFACES", "lo")
        .env("MICRO_MDNS_PORT", port.to_string())
        .output()
        .expect("run micro");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_describes_and_calls_a_live_service() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let registry = MdnsRegistry::new(MdnsOptions::default().interfaces(["lo"]).port(port)).unwrap();
    let svc = Service::new("calc")
        .address("127.0.0.1:0")
        .registry(Arc::new(registry))
        .handler(CalcImpl)
        .start()
        .await
        .unwrap();

    let run =
        move |args: &'static [&'static str]| tokio::task::spawn_blocking(move || micro(port, args));
    let (ok, out, err) = run(&["services"]).await.unwrap();
    assert!(
        ok && out.contains("calc") && out.contains(&svc.node().address),
        "{out}{err}"
    );

    let (ok, out, err) = run(&["describe", "calc"]).await.unwrap();
    assert!(
        ok && out.contains("Calc.Add(a: i64, b: i64) -> i64") && out.contains("Adds two numbers."),
        "{out}{err}"
    );

    let (ok, out, err) = run(&["call", "calc", "Calc.Add", r#"{"a": 2, "b": 40}"#])
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "42");

    let (ok, out, err) = run(&["stream", "calc", "Calc.Count", "3"]).await.unwrap();
    assert!(ok, "{err}");
    assert_eq!(out, "1\n2\n3\n");
    let (ok, out, err) = run(&["stream", "calc", "Calc.Count", "102"]).await.unwrap();
    assert!(!ok && out.lines().count() == 100, "{out}");
    assert!(err.contains("counting past 100"), "{err}");

    let (ok, _, err) = run(&["health", "calc"]).await.unwrap();
    assert!(ok, "{err}");

    let (ok, _, err) = run(&["call", "calc", "Calc.Add", "{not json"])
        .await
        .unwrap();
    assert!(!ok && err.contains("not valid JSON"), "{err}");
    let (ok, _, err) = run(&["call", "calc", "Calc.Sub", "{}"]).await.unwrap();
    assert!(!ok && err.contains("unknown endpoint `Calc.Sub`"), "{err}");
    let (ok, _, err) = run(&["call", "calc", "Calc.Add", r#"{"a": "x"}"#])
        .await
        .unwrap();
    assert!(!ok && err.contains("400"), "{err}");
    let (ok, _, err) = run(&["bogus"]).await.unwrap();
    assert!(!ok && err.contains("usage"), "{err}");

    svc.stop().await.unwrap();
}
