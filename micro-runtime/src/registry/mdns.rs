//! Zero-configuration discovery over multicast DNS (RFC 6762) with DNS-SD
//! records (RFC 6763), like go-micro's default registry.
//!
//! # Records
//!
//! Every node is one instance of the service type `_micro._tcp.local.`, named
//! after its node id: a PTR record points to it, SRV and A/AAAA records give
//! its address, and TXT entries carry the service name, version, node id,
//! address, metadata and endpoints (JSON, split over several entries when
//! longer than the 255 bytes an entry may hold). All records of a node carry
//! the TTL it was registered with.
//!
//! # Interfaces
//!
//! By default the registry speaks on the loopback interface only: this keeps
//! dev services off the LAN. Set `MICRO_MDNS_INTERFACES=all` (or a list such
//! as `lo,eth0`) to span machines; see [`MdnsOptions::from_env`]. Multicast on
//! Linux `lo` works without the interface's `MULTICAST` flag: the socket joins
//! the group on 127.0.0.1 and sends with `IP_MULTICAST_IF` 127.0.0.1. No group
//! is ever joined, and nothing is ever sent, on an interface that was not
//! selected (the socket is set up before any packet leaves it).
//!
//! # Life of a node
//!
//! `register` announces a node (twice at first, one second apart, as RFC 6762
//! §8.3 asks) and each later `register` re-announces it, which keeps it alive
//! in the other processes' view. `deregister` sends goodbyes (TTL 0) so that
//! the others drop the node at once. A node whose owner stops refreshing (or
//! was killed) drops out when its TTL passes; at three quarters of the TTL a
//! browser asks again, so a lost announcement does not make a live node expire.
//!
//! # View
//!
//! One background task per registry listens to the group, answers queries
//! for this registry's own nodes and keeps the view that `get_service`,
//! `list_services` and `watch` read. At start it queries the group, and the
//! first lookups wait briefly (up to [`STARTUP_WINDOW`]) for the answers.

mod txt;
mod wire;

use super::{merge_records, EventKind, Registry, RegistryError, ServiceRecord, Watcher, Watchers};
use async_trait::async_trait;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use wire::{Message, Name, Question, RData, Record};

/// The mDNS group.
const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
/// The standard mDNS port.
pub const MDNS_PORT: u16 = 5353;
/// The DNS-SD service type of micro services.
const SERVICE_TYPE: [&str; 3] = ["_micro", "_tcp", "local"];
/// A lookup of an unknown name waits for the start-up query's answers this long
/// after the registry was created.
pub const STARTUP_WINDOW: Duration = Duration::from_millis(1500);
/// `list_services` waits at most this long after creation for the answers.
const LIST_SETTLE: Duration = Duration::from_millis(500);
/// How often the view is swept for expired nodes.
const SWEEP_EVERY: Duration = Duration::from_millis(200);
/// Largest message sent when other machines may be reached (RFC 6762 §17).
const MAX_PACKET_LAN: usize = 9000;
/// Largest message sent over loopback only.
const MAX_PACKET_LOOPBACK: usize = 60_000;

/// Which interfaces the registry speaks on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MdnsInterfaces {
    /// Loopback only (127.0.0.1): services of this machine see each other,
    /// nothing reaches the LAN. The default.
    #[default]
    Loopback,
    /// Every IPv4 interface that is up (and loopback).
    All,
    /// The named interfaces, e.g. `lo` and `eth0`.
    Named(Vec<String>),
}

impl MdnsInterfaces {
    /// Parses `all`, `loopback`, or a comma-separated list of interface names.
    pub fn parse(s: &str) -> Self {
        let names: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() || names.iter().all(|n| n.eq_ignore_ascii_case("loopback")) {
            Self::Loopback
        } else if names
            .iter()
            .any(|n| n.eq_ignore_ascii_case("all") || n == "*")
        {
            Self::All
        } else {
            Self::Named(names)
        }
    }
}

/// Options of the [`MdnsRegistry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdnsOptions {
    /// Interfaces to speak on. Default: loopback only, which keeps dev
    /// services off the LAN; set `MICRO_MDNS_INTERFACES=all` or a list to
    /// span machines.
    pub interfaces: MdnsInterfaces,
    /// UDP port (default 5353). Processes see each other only on the same port.
    pub port: u16,
}

impl Default for MdnsOptions {
    fn default() -> Self {
        Self {
            interfaces: MdnsInterfaces::Loopback,
            port: MDNS_PORT,
        }
    }
}

impl MdnsOptions {
    /// The defaults, overridden by `MICRO_MDNS_INTERFACES` (`all`, or a
    /// comma-separated list of interface names such as `lo,eth0`) and
    /// `MICRO_MDNS_PORT`. Unparsable values are logged and ignored.
    pub fn from_env() -> Self {
        let mut o = Self::default();
        if let Ok(v) = std::env::var("MICRO_MDNS_INTERFACES") {
            o.interfaces = MdnsInterfaces::parse(&v);
        }
        if let Ok(v) = std::env::var("MICRO_MDNS_PORT") {
            match v.trim().parse::<u16>() {
                Ok(p) if p != 0 => o.port = p,
                _ => tracing::warn!(value = %v, "ignoring invalid MICRO_MDNS_PORT"),
            }
        }
        o
    }

    /// Speak on the named interfaces (`"all"` among them means every interface).
    pub fn interfaces<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list: Vec<String> = names.into_iter().map(|s| s.as_ref().to_owned()).collect();
        self.interfaces = MdnsInterfaces::parse(&list.join(","));
        self
    }

    /// Speak on every interface.
    pub fn all_interfaces(mut self) -> Self {
        self.interfaces = MdnsInterfaces::All;
        self
    }

    /// Use `port` instead of 5353.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
}

/// A registry over multicast DNS. Clones share one socket and one view; the
/// background task stops (sending goodbyes for the nodes still registered)
/// when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct MdnsRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    /// Dropped with the last clone, which stops the background task.
    _stop: oneshot::Sender<()>,
}

#[derive(Debug)]
struct Shared {
    /// Random id of this registry, carried in TXT, to ignore our own packets.
    origin: u64,
    sock: UdpSocket,
    /// Addresses of the selected interfaces; the first is the socket's default.
    ifaces: Vec<Ipv4Addr>,
    /// Only loopback selected: packets from elsewhere are ignored.
    loopback_only: bool,
    group: SocketAddr,
    max_packet: usize,
    created: Instant,
    /// Serialises (choose interface, send) pairs.
    send_lock: Mutex<()>,
    state: Mutex<State>,
    /// Woken on every change of the view.
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Lower-cased instance label → node.
    nodes: HashMap<String, Entry>,
    watchers: Watchers,
    /// When to answer the queries received.
    respond_at: Option<Instant>,
    last_query: Option<Instant>,
}

#[derive(Debug)]
struct Entry {
    /// The service with exactly this node.
    record: ServiceRecord,
    ttl: Duration,
    /// When it was last registered (own) or announced (others).
    seen: Instant,
    /// Registered by this registry.
    own: bool,
    /// A refresh query was sent for this sighting.
    queried: bool,
    /// Own nodes: when to announce again (RFC 6762 §8.3 asks for two announcements).
    announce_again: Option<Instant>,
}

impl Entry {
    fn expires(&self) -> Instant {
        self.seen + self.ttl
    }
}

impl State {
    /// Inserts or refreshes a node; tells watchers of a new node (Create) or a
    /// changed one (Update). A refresh with the same content tells nobody.
    fn upsert(
        &mut self,
        key: String,
        record: ServiceRecord,
        ttl: Duration,
        own: bool,
        now: Instant,
    ) -> bool {
        let kind = match self.nodes.get_mut(&key) {
            Some(e) if e.own && !own => return false,
            Some(e) => {
                let changed = e.record != record;
                let first_own = own && !e.own;
                e.ttl = ttl;
                e.seen = now;
                e.own = own;
                e.queried = false;
                if first_own {
                    e.announce_again = Some(now + Duration::from_secs(1));
                }
                if !changed {
                    return false;
                }
                e.record = record.clone();
                EventKind::Update
            }
            None => {
                self.nodes.insert(
                    key,
                    Entry {
                        record: record.clone(),
                        ttl,
                        seen: now,
                        own,
                        queried: false,
                        announce_again: own.then(|| now + Duration::from_secs(1)),
                    },
                );
                EventKind::Create
            }
        };
        self.watchers.notify(kind, &record);
        true
    }

    fn remove(&mut self, key: &str) -> bool {
        match self.nodes.remove(key) {
            Some(e) => {
                self.watchers.notify(EventKind::Delete, &e.record);
                true
            }
            None => false,
        }
    }

    fn live(&self, name: Option<&str>, now: Instant) -> Vec<ServiceRecord> {
        let mut recs: Vec<&Entry> = self
            .nodes
            .values()
            .filter(|e| e.expires() > now && name.is_none_or(|n| n == e.record.name))
            .collect();
        recs.sort_by(|a, b| a.record.nodes[0].id.cmp(&b.record.nodes[0].id));
        merge_records(recs.into_iter().map(|e| e.record.clone()))
    }
}

impl MdnsRegistry {
    /// Opens the socket on the selected interfaces, starts the background
    /// task on the current tokio runtime (outside one this is an error) and
    /// queries for the services already there.
    pub fn new(options: MdnsOptions) -> Result<Self, RegistryError> {
        let ifaces = resolve_interfaces(&options.interfaces)?;
        let loopback_only = ifaces.iter().all(|(_, ip)| ip.is_loopback());
        let std_sock = open_socket(options.port, &ifaces)?;
        let handle = runtime_handle()?;
        let sock = {
            let _enter = handle.enter();
            UdpSocket::from_std(std_sock).map_err(unavailable)?
        };
        tracing::debug!(port = options.port, interfaces = ?ifaces, "mdns registry started");
        let shared = Arc::new(Shared {
            origin: rand::random(),
            sock,
            ifaces: ifaces.iter().map(|(_, ip)| *ip).collect(),
            loopback_only,
            group: SocketAddr::V4(SocketAddrV4::new(GROUP_V4, options.port)),
            max_packet: if loopback_only {
                MAX_PACKET_LOOPBACK
            } else {
                MAX_PACKET_LAN
            },
            created: Instant::now(),
            send_lock: Mutex::new(()),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        handle.spawn(run(shared.clone(), stop_rx));
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                _stop: stop_tx,
            }),
        })
    }

    /// With [`MdnsOptions::from_env`].
    pub fn from_env() -> Result<Self, RegistryError> {
        Self::new(MdnsOptions::from_env())
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }
}

fn unavailable(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable {
        registry: "mdns",
        detail: e.to_string(),
    }
}

/// The selected interfaces with their IPv4 address.
fn resolve_interfaces(sel: &MdnsInterfaces) -> Result<Vec<(String, Ipv4Addr)>, RegistryError> {
    if *sel == MdnsInterfaces::Loopback {
        return Ok(vec![("lo".into(), Ipv4Addr::LOCALHOST)]);
    }
    let all = if_addrs::get_if_addrs()
        .map_err(|e| unavailable(format!("cannot list interfaces: {e}")))?;
    let mut out: Vec<(String, Ipv4Addr)> = Vec::new();
    let add = |out: &mut Vec<(String, Ipv4Addr)>, name: &str, ip: Ipv4Addr| {
        if !out.iter().any(|(n, a)| n == name || *a == ip) {
            out.push((name.to_owned(), ip));
        }
    };
    match sel {
        MdnsInterfaces::Named(names) => {
            for name in names {
                let found = all.iter().find_map(|i| match i.ip() {
                    IpAddr::V4(ip) if &i.name == name => Some(ip),
                    _ => None,
                });
                match found {
                    Some(ip) => add(&mut out, name, ip),
                    None if name == "lo" => add(&mut out, name, Ipv4Addr::LOCALHOST),
                    None => {
                        return Err(unavailable(format!("interface {name} has no IPv4 address")))
                    }
                }
            }
        }
        _ => {
            for i in &all {
                if let IpAddr::V4(ip) = i.ip() {
                    if i.is_loopback() || (i.is_oper_up() && !i.is_p2p()) {
                        add(&mut out, &i.name, ip);
                    }
                }
            }
            if !out.iter().any(|(_, ip)| ip.is_loopback()) {
                add(&mut out, "lo", Ipv4Addr::LOCALHOST);
            }
        }
    }
    // Loopback first: it becomes the socket's default sending interface.
    out.sort_by_key(|(_, ip)| !ip.is_loopback());
    Ok(out)
}

/// One UDP socket bound to the port, member of the group on the selected
/// interfaces only, sending on the first of them unless told otherwise.
fn open_socket(
    port: u16,
    ifaces: &[(String, Ipv4Addr)],
) -> Result<std::net::UdpSocket, RegistryError> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(unavailable)?;
    let ctx = |what: &'static str| move |e: std::io::Error| unavailable(format!("{what}: {e}"));
    sock.set_reuse_address(true).map_err(ctx("SO_REUSEADDR"))?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    sock.set_reuse_port(true).map_err(ctx("SO_REUSEPORT"))?;
    sock.set_nonblocking(true).map_err(ctx("O_NONBLOCK"))?;
    // Receive only the groups this socket joined, not those of other sockets
    // of the host (Linux delivers them all by default).
    #[cfg(target_os = "linux")]
    sock.set_multicast_all_v4(false)
        .map_err(ctx("IP_MULTICAST_ALL"))?;
    sock.set_multicast_loop_v4(true)
        .map_err(ctx("IP_MULTICAST_LOOP"))?;
    sock.set_multicast_ttl_v4(255)
        .map_err(ctx("IP_MULTICAST_TTL"))?;
    // The sending interface is fixed before anything can be sent.
    sock.set_multicast_if_v4(&ifaces[0].1)
        .map_err(ctx("IP_MULTICAST_IF"))?;
    let bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    sock.bind(&bind.into()).map_err(ctx("bind"))?;
    for (name, ip) in ifaces {
        sock.join_multicast_v4(&GROUP_V4, ip)
            .map_err(|e| unavailable(format!("join {GROUP_V4} on {name} ({ip}): {e}")))?;
    }
    Ok(sock.into())
}

/// The current tokio runtime: the registry's task runs there (micro never
/// starts a runtime of its own).
fn runtime_handle() -> Result<tokio::runtime::Handle, RegistryError> {
    tokio::runtime::Handle::try_current().map_err(|_| {
        unavailable(
            "the mDNS registry must be created inside a tokio runtime (e.g. in #[micro::main])",
        )
    })
}

/// The DNS label of a node's instance: its id, shortened (with a hash, to stay
/// unique) when over the 63 bytes a label may hold.
fn instance_label(id: &str) -> String {
    if id.len() <= 63 {
        return id.to_owned();
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    let mut cut = 46;
    while !id.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{:016x}", &id[..cut], h.finish())
}

fn key_of(label: &[u8]) -> String {
    String::from_utf8_lossy(label).to_ascii_lowercase()
}

fn instance_name(label: &str) -> Name {
    Name::from_labels([label, SERVICE_TYPE[0], SERVICE_TYPE[1], SERVICE_TYPE[2]])
}

/// A host name for the SRV target: the label with only letters, digits and `-`.
fn host_name(label: &str) -> Name {
    let host: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    Name::from_labels([host.as_str(), "local"])
}

fn ttl_secs(ttl: Duration) -> u32 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

impl Shared {
    /// The announcement (or, with `ttl` 0, the goodbye) of one node.
    fn announcement(&self, record: &ServiceRecord, ttl: u32) -> Result<Vec<u8>, RegistryError> {
        let node = &record.nodes[0];
        let label = instance_label(&node.id);
        let instance = instance_name(&label);
        let entries = txt::encode(record, node, self.origin).map_err(RegistryError::Invalid)?;
        let mut records = vec![
            Record {
                name: Name::from_labels(SERVICE_TYPE),
                flush: false,
                ttl,
                data: RData::Ptr(instance.clone()),
            },
            Record {
                name: instance.clone(),
                flush: true,
                ttl,
                data: RData::Txt(entries),
            },
        ];
        if let Some((host, port)) = node.address.rsplit_once(':') {
            if let Ok(port) = port.parse::<u16>() {
                let target = host_name(&label);
                let ip = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>();
                match ip {
                    Ok(IpAddr::V4(ip)) if !ip.is_unspecified() => records.push(Record {
                        name: target.clone(),
                        flush: true,
                        ttl,
                        data: RData::A(ip),
                    }),
                    Ok(IpAddr::V6(ip)) if !ip.is_unspecified() => records.push(Record {
                        name: target.clone(),
                        flush: true,
                        ttl,
                        data: RData::Aaaa(ip),
                    }),
                    _ => {}
                }
                records.push(Record {
                    name: instance,
                    flush: true,
                    ttl,
                    data: RData::Srv {
                        priority: 0,
                        weight: 0,
                        port,
                        target,
                    },
                });
            }
        }
        let bytes = Message {
            response: true,
            questions: vec![],
            records,
        }
        .encode()
        .map_err(|e| RegistryError::Invalid(format!("node {}: {e}", node.id)))?;
        if bytes.len() > self.max_packet {
            return Err(RegistryError::Invalid(format!(
                "record of node {} is {} bytes, over the mDNS limit of {}",
                node.id,
                bytes.len(),
                self.max_packet
            )));
        }
        Ok(bytes)
    }

    fn query(&self) -> Vec<u8> {
        let q = Message {
            response: false,
            questions: vec![Question {
                name: Name::from_labels(SERVICE_TYPE),
                qtype: wire::TYPE_PTR,
            }],
            records: vec![],
        };
        q.encode().unwrap_or_default()
    }

    /// Sends `bytes` to the group on every selected interface.
    fn send(&self, bytes: &[u8]) {
        let _guard = self.send_lock.lock().unwrap_or_else(|e| e.into_inner());
        for (i, ip) in self.ifaces.iter().enumerate() {
            if self.ifaces.len() > 1 {
                if let Err(e) = SockRef::from(&self.sock).set_multicast_if_v4(ip) {
                    tracing::debug!(%ip, error = %e, "mdns: cannot select interface");
                    continue;
                }
            }
            // Straight to the (non-blocking) socket: tokio's `try_send_to`
            // reports WouldBlock until its reactor has seen the socket writable,
            // which loses the first packets of a new registry.
            if let Err(e) = SockRef::from(&self.sock).send_to(bytes, &self.group.into()) {
                tracing::debug!(%ip, error = %e, "mdns: send failed");
            }
            if i + 1 == self.ifaces.len() && self.ifaces.len() > 1 {
                // Back to the default interface.
                let _ = SockRef::from(&self.sock).set_multicast_if_v4(&self.ifaces[0]);
            }
        }
    }

    fn send_query(&self, now: Instant) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_query = Some(now);
        self.send(&self.query());
    }

    /// Handles one received packet; anything malformed or foreign is ignored.
    fn handle_packet(&self, bytes: &[u8], from: SocketAddr) {
        if self.loopback_only && !from.ip().is_loopback() {
            tracing::debug!(%from, "mdns: ignoring a packet from off this machine");
            return;
        }
        let msg = match Message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%from, error = %e, "mdns: ignoring a malformed packet");
                return;
            }
        };
        let now = Instant::now();
        if !msg.response {
            self.handle_query(&msg, now);
            return;
        }
        // Gather the records by instance, and the addresses by host.
        let mut txts: Vec<(String, u32, &Vec<Vec<u8>>)> = Vec::new();
        let mut srvs: HashMap<String, (u16, String)> = HashMap::new();
        let mut hosts: HashMap<String, IpAddr> = HashMap::new();
        let mut goodbyes: Vec<String> = Vec::new();
        for r in &msg.records {
            match &r.data {
                RData::Txt(entries) => {
                    if let Some(label) = r.name.first_under(&SERVICE_TYPE) {
                        txts.push((key_of(label), r.ttl, entries));
                    }
                }
                RData::Srv { port, target, .. } => {
                    if let Some(label) = r.name.first_under(&SERVICE_TYPE) {
                        srvs.insert(key_of(label), (*port, target.key()));
                    }
                }
                RData::Ptr(instance) if r.ttl == 0 && r.name.is(&SERVICE_TYPE) => {
                    if let Some(label) = instance.first_under(&SERVICE_TYPE) {
                        goodbyes.push(key_of(label));
                    }
                }
                RData::A(ip) => {
                    hosts.entry(r.name.key()).or_insert(IpAddr::V4(*ip));
                }
                RData::Aaaa(ip) => {
                    hosts.entry(r.name.key()).or_insert(IpAddr::V6(*ip));
                }
                _ => {}
            }
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for (key, ttl, entries) in txts {
            let decoded = match txt::decode(entries) {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(%from, instance = %key, error = %e, "mdns: ignoring a foreign or malformed TXT record");
                    continue;
                }
            };
            if decoded.origin == Some(self.origin) {
                continue; // our own announcement, looped back
            }
            let mut record = decoded.record;
            if decoded.addr.is_none() {
                let addr = srvs.get(&key).and_then(|(port, host)| {
                    hosts
                        .get(host)
                        .map(|ip| SocketAddr::new(*ip, *port).to_string())
                });
                let Some(addr) = addr else {
                    tracing::debug!(%from, instance = %key, "mdns: ignoring a node without address");
                    continue;
                };
                record.nodes[0].address = addr;
            }
            if ttl == 0 {
                if state.nodes.get(&key).is_some_and(|e| !e.own) {
                    changed |= state.remove(&key);
                }
            } else {
                changed |=
                    state.upsert(key, record, Duration::from_secs(u64::from(ttl)), false, now);
            }
        }
        for key in goodbyes {
            if state.nodes.get(&key).is_some_and(|e| !e.own) {
                changed |= state.remove(&key);
            }
        }
        drop(state);
        if changed {
            self.changed.notify_waiters();
        }
    }

    /// Schedules an answer (after 20–120 ms, RFC 6762 §6) to a query for our
    /// service type or one of our instances.
    fn handle_query(&self, msg: &Message, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let asks = msg.questions.iter().any(|q| {
            (q.name.is(&SERVICE_TYPE) && matches!(q.qtype, wire::TYPE_PTR | wire::TYPE_ANY))
                || q.name
                    .first_under(&SERVICE_TYPE)
                    .is_some_and(|l| state.nodes.get(&key_of(l)).is_some_and(|e| e.own))
        });
        if !asks || !state.nodes.values().any(|e| e.own) {
            return;
        }
        let delay = Duration::from_millis(rand::random_range(20..=120));
        let at = now + delay;
        state.respond_at = Some(state.respond_at.map_or(at, |t| t.min(at)));
    }

    /// Answers the queries: announces every own live node with its remaining TTL.
    fn respond(&self, now: Instant) {
        let packets = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.respond_at = None;
            self.own_packets(&state, now, false)
        };
        for p in packets {
            self.send(&p);
        }
    }

    fn own_packets(&self, state: &State, now: Instant, goodbye: bool) -> Vec<Vec<u8>> {
        state
            .nodes
            .values()
            .filter(|e| e.own && e.expires() > now)
            .filter_map(|e| {
                let ttl = if goodbye {
                    0
                } else {
                    ttl_secs(e.expires() - now)
                };
                self.announcement(&e.record, ttl).ok()
            })
            .collect()
    }

    /// Expires nodes, re-announces new own nodes, and queries for nodes close
    /// to their expiry.
    fn sweep(&self, now: Instant) {
        let mut announce = Vec::new();
        let mut query = false;
        let mut changed = false;
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let expired: Vec<String> = state
                .nodes
                .iter()
                .filter(|(_, e)| e.expires() <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for key in expired {
                changed |= state.remove(&key);
            }
            for e in state.nodes.values_mut() {
                if e.own {
                    if e.announce_again.is_some_and(|t| t <= now) {
                        e.announce_again = None;
                        if let Ok(p) = self.announcement(&e.record, ttl_secs(e.expires() - now)) {
                            announce.push(p);
                        }
                    }
                } else if !e.queried && now >= e.seen + e.ttl.mul_f32(0.75) {
                    e.queried = true;
                    query = true;
                }
            }
            query &= state
                .last_query
                .is_none_or(|t| now >= t + Duration::from_millis(500));
        }
        if changed {
            self.changed.notify_waiters();
        }
        for p in announce {
            self.send(&p);
        }
        if query {
            self.send_query(now);
        }
    }
}

/// The background task: listens, answers, sweeps; says goodbye when stopped.
async fn run(shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let start = Instant::now();
    shared.send_query(start);
    // RFC 6762 §5.2: repeat the first query after a second.
    let mut second_query = Some(start + Duration::from_secs(1));
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 65_536];
    loop {
        let respond_at = shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .respond_at;
        let wake_at = match (respond_at, second_query) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            _ = &mut stop => break,
            r = shared.sock.recv_from(&mut buf) => match r {
                Ok((n, from)) => shared.handle_packet(&buf[..n], from),
                Err(e) => {
                    tracing::debug!(error = %e, "mdns: receive failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = tick.tick() => shared.sweep(Instant::now()),
            _ = tokio::time::sleep_until(wake_at.unwrap_or(start)), if wake_at.is_some() => {
                let now = Instant::now();
                if respond_at.is_some_and(|t| t <= now) {
                    shared.respond(now);
                }
                if second_query.is_some_and(|t| t <= now) {
                    second_query = None;
                    shared.send_query(now);
                }
            }
        }
    }
    let goodbyes = {
        let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        shared.own_packets(&state, Instant::now(), true)
    };
    for p in goodbyes {
        shared.send(&p);
    }
    tracing::debug!("mdns registry stopped");
}

#[async_trait]
impl Registry for MdnsRegistry {
    async fn register(&self, service: &ServiceRecord, ttl: Duration) -> Result<(), RegistryError> {
        let shared = self.shared();
        if service.name.is_empty() {
            return Err(RegistryError::Invalid("service without a name".into()));
        }
        let secs = ttl_secs(ttl);
        let mut packets = Vec::new();
        let mut records = Vec::new();
        for node in &service.nodes {
            if node.id.is_empty() {
                return Err(RegistryError::Invalid("node without an id".into()));
            }
            let record = ServiceRecord {
                nodes: vec![node.clone()],
                ..service.clone()
            };
            packets.push(shared.announcement(&record, secs)?);
            records.push(record);
        }
        let now = Instant::now();
        let mut changed = false;
        {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            for record in records {
                let key = key_of(instance_label(&record.nodes[0].id).as_bytes());
                changed |= state.upsert(key, record, ttl, true, now);
            }
        }
        if changed {
            shared.changed.notify_waiters();
        }
        for p in packets {
            shared.send(&p);
        }
        Ok(())
    }

    async fn deregister(&self, service: &ServiceRecord) -> Result<(), RegistryError> {
        let shared = self.shared();
        let mut packets = Vec::new();
        let mut changed = false;
        {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            for node in &service.nodes {
                let key = key_of(instance_label(&node.id).as_bytes());
                let record = match state.nodes.get(&key) {
                    Some(e) if e.own => e.record.clone(),
                    Some(_) => continue,
                    None => ServiceRecord {
                        nodes: vec![node.clone()],
                        ..service.clone()
                    },
                };
                changed |= state.remove(&key);
                if let Ok(p) = shared.announcement(&record, 0) {
                    packets.push(p);
                }
            }
        }
        if changed {
            shared.changed.notify_waiters();
        }
        for p in packets {
            shared.send(&p);
        }
        Ok(())
    }

    async fn get_service(&self, name: &str) -> Result<Vec<ServiceRecord>, RegistryError> {
        let shared = self.shared();
        let deadline = shared.created + STARTUP_WINDOW;
        loop {
            let notified = shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let found = shared
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .live(Some(name), now);
            if !found.is_empty() || now >= deadline {
                return Ok(found);
            }
            // Just started: the answers to the start-up query may be on their way.
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    async fn list_services(&self) -> Result<Vec<ServiceRecord>, RegistryError> {
        let shared = self.shared();
        // Just started: give the answers to the start-up query a moment.
        tokio::time::sleep_until(shared.created + LIST_SETTLE).await;
        Ok(shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live(None, Instant::now()))
    }

    async fn watch(&self, service: Option<&str>) -> Result<Watcher, RegistryError> {
        let mut state = self
            .shared()
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Ok(state.watchers.add(service))
    }

    fn name(&self) -> &'static str {
        "mdns"
    }

    fn local_only(&self) -> bool {
        self.inner.shared.loopback_only
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Endpoint, Node};

    fn node_ids(records: &[ServiceRecord]) -> Vec<&str> {
        records
            .iter()
            .flat_map(|r| r.nodes.iter().map(|n| n.id.as_str()))
            .collect()
    }

    fn options() -> MdnsOptions {
        MdnsOptions::default().port(rand::random_range(20_000..60_000))
    }

    fn record(name: &str, id: &str, port: u16) -> ServiceRecord {
        ServiceRecord {
            name: name.into(),
            version: "1".into(),
            endpoints: vec![Endpoint {
                name: "X.Y".into(),
                doc: "d".repeat(500),
                ..Default::default()
            }],
            nodes: vec![Node {
                id: id.into(),
                address: format!("127.0.0.1:{port}"),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn options_parse() {
        assert_eq!(MdnsInterfaces::parse(""), MdnsInterfaces::Loopback);
        assert_eq!(MdnsInterfaces::parse("all"), MdnsInterfaces::All);
        assert_eq!(
            MdnsInterfaces::parse("lo, eth0"),
            MdnsInterfaces::Named(vec!["lo".into(), "eth0".into()])
        );
        assert_eq!(
            MdnsOptions::default().interfaces(["lo"]).interfaces,
            MdnsInterfaces::Named(vec!["lo".into()])
        );
        assert_eq!(MdnsOptions::default().port, 5353);
        assert_eq!(MdnsOptions::default().interfaces, MdnsInterfaces::Loopback);
    }

    #[test]
    fn labels_fit() {
        assert_eq!(instance_label("greeter-1"), "greeter-1");
        let long = "é".repeat(60);
        let l = instance_label(&long);
        assert!(l.len() <= 63, "{}", l.len());
        assert_ne!(
            instance_label(&format!("{long}a")),
            instance_label(&format!("{long}b"))
        );
    }

    #[tokio::test]
    async fn own_registrations_and_malformed_packets() {
        let r = MdnsRegistry::new(options()).unwrap();
        let mut w = r.watch(Some("a")).await.unwrap();
        r.register(&record("a", "n1", 1), Duration::from_secs(30))
            .await
            .unwrap();
        r.register(&record("a", "n1", 1), Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(w.recv().await.unwrap().kind, EventKind::Create);
        // Junk and foreign records are ignored.
        let shared = r.shared();
        let from: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        shared.handle_packet(b"\x00\x01garbage", from);
        let foreign = Message {
            response: true,
            questions: vec![],
            records: vec![Record {
                name: instance_name("printer"),
                flush: true,
                ttl: 120,
                data: RData::Txt(vec![b"txtvers=1".to_vec(), b"name=x".to_vec()]),
            }],
        };
        shared.handle_packet(&foreign.encode().unwrap(), from);
        // A packet from off the machine is ignored in loopback mode.
        let mut other = record("a", "n2", 2);
        other.nodes[0].address = "10.0.0.1:2".into();
        let mut remote = shared.announcement(&other, 30).unwrap();
        shared.handle_packet(&remote, "10.0.0.1:5353".parse().unwrap());
        assert_eq!(node_ids(&r.get_service("a").await.unwrap()), ["n1"]);
        // The same packet from loopback (another origin) is accepted.
        let r2 = MdnsRegistry::new(options()).unwrap();
        remote = r2.shared().announcement(&other, 30).unwrap();
        shared.handle_packet(&remote, from);
        assert_eq!(node_ids(&r.get_service("a").await.unwrap()), ["n1", "n2"]);
        let ev = w.recv().await.unwrap();
        assert_eq!(
            (ev.kind, ev.service.nodes[0].id.as_str()),
            (EventKind::Create, "n2")
        );
        r.deregister(&record("a", "n1", 1)).await.unwrap();
        assert_eq!(w.recv().await.unwrap().kind, EventKind::Delete);
        assert_eq!(r.list_services().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn oversized_records_are_rejected() {
        let r = MdnsRegistry::new(options().interfaces(["lo"])).unwrap();
        let mut rec = record("a", "n1", 1);
        rec.endpoints[0].doc = "x".repeat(70_000);
        assert!(matches!(
            r.register(&rec, Duration::from_secs(5)).await,
            Err(RegistryError::Invalid(_))
        ));
    }

    #[test]
    fn outside_a_runtime_is_a_clear_error() {
        let e = MdnsRegistry::new(options()).unwrap_err();
        assert!(e.to_string().contains("inside a tokio runtime"), "{e}");
    }
}
