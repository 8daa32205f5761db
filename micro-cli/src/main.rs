//! `micro`: the toolkit. Lists and describes services found in the registry,
//! and calls any endpoint with a JSON body.
//!
//! ```text
//! micro services                         list services and their nodes
//! micro describe <service>               endpoints, request/response types, docs
//! micro call <service> <endpoint> [json] call an endpoint, print the JSON reply
//! micro stream <service> <endpoint> [json] open a server stream, print each item as it comes
//! micro health <service>                 Debug.Health of the service
//! ```
//! The registry comes from the environment (`MICRO_REGISTRY`, ...), as for services.

use micro::registry::ServiceRecord;
use micro::{CallOptions, Client, ContentType, Error};
use std::process::ExitCode;

const USAGE: &str = "usage:
  micro services                         list services and their nodes
  micro describe <service>               endpoints, request/response types, docs
  micro call <service> <endpoint> [json] call an endpoint with a JSON body
  micro stream <service> <endpoint> [json]
                                         open a server-streaming endpoint, print each item
  micro health <service>                 call <service>'s Debug.Health";

#[micro::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &[String]) -> Result<String, Error> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["services"] => {
            let client = Client::new()?;
            let services = client.registry().list_services().await?;
            Ok(services.iter().map(summary).collect::<Vec<_>>().join("\n"))
        }
        ["describe", service] => {
            let client = Client::new()?;
            let records = client.registry().get_service(service).await?;
            if records.is_empty() {
                return Err(Error::not_found(
                    "micro.cli",
                    format!("service `{service}` not found"),
                ));
            }
            Ok(records.iter().map(describe).collect::<Vec<_>>().join("\n"))
        }
        ["call", service, endpoint, rest @ ..] if rest.len() <= 1 => {
            let body = rest.first().copied().unwrap_or("null");
            json_arg(body)?;
            call(service, endpoint, body).await
        }
        ["stream", service, endpoint, rest @ ..] if rest.len() <= 1 => {
            let body = json_arg(rest.first().copied().unwrap_or("null"))?;
            stream(service, endpoint, &body).await?;
            Ok(String::new())
        }
        ["health", service] => call(service, "Debug.Health", "null").await,
        _ => Err(Error::bad_request("micro.cli", USAGE)),
    }
}

async fn call(service: &str, endpoint: &str, body: &str) -> Result<String, Error> {
    let client = Client::new()?;
    let reply = client
        .call_raw(
            service,
            endpoint,
            ContentType::Json,
            body.as_bytes(),
            &CallOptions::new(),
        )
        .await?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

fn json_arg(body: &str) -> Result<serde_json::Value, Error> {
    serde_json::from_str(body)
        .map_err(|e| Error::bad_request("micro.cli", format!("the request is not valid JSON: {e}")))
}

/// Prints each item of a server stream as one line of JSON, as it arrives.
async fn stream(service: &str, endpoint: &str, body: &serde_json::Value) -> Result<(), Error> {
    let client = Client::new()?;
    let opts = CallOptions::new().content_type(ContentType::Json);
    let mut items = client
        .server_stream::<_, serde_json::Value>(service, endpoint, body, &opts)
        .await?;
    while let Some(item) = items.message().await? {
        println!("{item}");
    }
    Ok(())
}

fn summary(r: &ServiceRecord) -> String {
    let nodes: Vec<String> = r
        .nodes
        .iter()
        .map(|n| format!("{} {}", n.id, n.address))
        .collect();
    format!("{} {}\n  {}", r.name, r.version, nodes.join("\n  "))
}

fn describe(r: &ServiceRecord) -> String {
    let mut out = summary(r);
    for e in &r.endpoints {
        // Several arguments are described as `(a: A, b: B)` already; none as `()`.
        let args = if e.request.starts_with('(') {
            e.request.clone()
        } else {
            format!("({})", e.request)
        };
        out.push_str(&format!("\n  {}{args} -> {}", e.name, e.response));
        if !e.doc.is_empty() {
            out.push_str(&format!("\n      {}", e.doc.replace('\n', "\n      ")));
        }
    }
    out
}
