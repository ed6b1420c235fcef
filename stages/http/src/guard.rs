//! The address guard: URLs come from data, so by default `http-download` connects only to
//! addresses a stranger's server could have. [`forbidden`] is the one classifier; the
//! [`GuardedResolver`] is ureq's name resolver for the stage's agent, so a host name is
//! resolved once per request (every redirect hop is a request), the refused addresses are
//! dropped, and ureq connects to exactly the approved ones. Checking a name and letting the
//! client resolve it again to connect would let a name answer differently the second time
//! (DNS rebinding).
//!
//! The resolution runs within the request's timeout, which the stage sets from the attempt's
//! time left: on a thread of its own that the request waits for no longer than that (the
//! system resolver has no timeout of its own to give).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::Duration;

use stagewise_core::stage::StageError;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Refused IPv4 networks: the IANA IPv4 special-purpose registry, multicast and reserved space,
/// and cloud host services. The first match gives the reason.
const V4: &[(Ipv4Addr, u8, &str)] = &[
    (
        Ipv4Addr::new(168, 63, 129, 16),
        32,
        "cloud host service (Azure)",
    ),
    (Ipv4Addr::new(169, 254, 169, 254), 32, "cloud metadata"),
    (
        Ipv4Addr::new(100, 100, 100, 200),
        32,
        "cloud metadata (Alibaba)",
    ),
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\""),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared (carrier-grade NAT)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments"),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation (TEST-NET-1)",
    ),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "6to4 relay anycast"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation (TEST-NET-2)",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation (TEST-NET-3)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "broadcast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
];

/// Refused IPv6 networks (after the forms that embed an IPv4 address, judged by that address:
/// see [`embedded_v4`]): the IANA IPv6 special-purpose registry and the deprecated blocks.
/// Anything outside global unicast (`2000::/3`) is refused after these too.
const V6: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128, "unspecified"),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128, "loopback"),
    // `::a.b.c.d`: deprecated (RFC 4291), never routed; no host is reached through one.
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        "IPv4-compatible (deprecated)",
    ),
    // Local-use NAT64 (RFC 8215): where the IPv4 address sits depends on the network's own
    // prefix length, so it cannot be read back; refused whole.
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use NAT64",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only",
    ),
    // Teredo (2001::/32) embeds its server's address and the client's NAT mapping, not the
    // host's own address: the relay path is out of our sight and the service is retired, so
    // it is refused whole rather than judged by an embedded address.
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        "Teredo tunnel",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignments",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "segment routing (SRv6)",
    ),
    (
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
        128,
        "cloud metadata (AWS)",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "private (unique local)",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "site-local (deprecated)",
    ),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

/// Why an address is not for a URL from the outside, if it is not.
pub(crate) fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return forbidden_v4(v4);
            }
            let bits = u128::from(v6);
            let hit = V6.iter().find(|(net, len, _)| {
                let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
                bits & mask == u128::from(*net) & mask
            });
            match hit {
                Some((_, _, why)) => Some(why),
                None if bits >> 125 != 0b001 => Some("reserved (not global unicast)"),
                None => None,
            }
        }
    }
}

fn forbidden_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(v4);
    V4.iter()
        .find(|(net, len, _)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
            bits & mask == u32::from(*net) & mask
        })
        .map(|(_, _, why)| *why)
}

/// The IPv4 address an IPv6 address stands for, where the packets really go there: mapped
/// (`::ffff:a.b.c.d`, a dual-stack socket connects over IPv4), translated (`::ffff:0:a.b.c.d`),
/// well-known NAT64 (`64:ff9b::a.b.c.d`, the gateway forwards to it) and 6to4
/// (`2002:aabb:ccdd::/48`, tunnelled to `aa.bb.cc.dd`).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = v6.segments();
    let [.., a, b, c, d] = v6.octets();
    let tail = Ipv4Addr::new(a, b, c, d);
    match seg {
        [0, 0, 0, 0, 0, 0xffff, ..] | [0, 0, 0, 0, 0xffff, 0, ..] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(tail),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        _ => None,
    }
}

/// The environment variable of [`TestResolve`].
pub(crate) const TEST_RESOLVE_VAR: &str = "STAGEWISE_TEST_RESOLVE";

/// A testing aid, never needed in a real run: `STAGEWISE_TEST_RESOLVE="a.test=127.0.0.2,127.0.0.1;b.test=127.0.0.1"`
/// makes those names resolve to those addresses, in that order, and an address so given that is
/// 127.0.0.2 counts as public. It is what lets a test play a DNS server that answers a public
/// address and a private one, with only loopback servers to connect to.
///
/// An environment variable rather than a cargo feature, so that the tests run the binary as it
/// ships. It cannot widen what a production run reaches: it answers only for names under
/// `.test`, which are reserved (RFC 6761) and never resolve otherwise, so no real URL changes
/// meaning; and it makes no address public but 127.0.0.2, and that only when the operator
/// mapped a `.test` name to it (127.0.0.2 in a URL, or from real DNS, is refused as ever).
#[derive(Debug, Clone, Default)]
pub(crate) struct TestResolve {
    names: HashMap<String, Vec<IpAddr>>,
}

/// The one address [`TestResolve`] may make public.
const TEST_PUBLIC: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

impl TestResolve {
    /// Read from the environment; `None` when the variable is unset.
    pub(crate) fn from_env() -> Result<Option<TestResolve>, String> {
        match std::env::var(TEST_RESOLVE_VAR) {
            Ok(text) => TestResolve::parse(&text).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => Err(format!("`{TEST_RESOLVE_VAR}`: {e}")),
        }
    }

    fn parse(text: &str) -> Result<TestResolve, String> {
        let mut names = HashMap::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |why: &str| format!("`{TEST_RESOLVE_VAR}`: {entry:?}: {why}");
            let (name, list) = entry
                .split_once('=')
                .ok_or_else(|| bad("expected NAME=ADDRESS,ADDRESS…"))?;
            let name = name.trim().to_ascii_lowercase();
            if !name.ends_with(".test") {
                return Err(bad("only names under `.test` may be given"));
            }
            let addrs = list
                .split(',')
                .map(|a| a.trim().parse::<IpAddr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(&e.to_string()))?;
            names.insert(name, addrs);
        }
        Ok(TestResolve { names })
    }

    fn lookup(&self, host: &str) -> Option<&[IpAddr]> {
        let host = host.to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        self.names.get(host).map(Vec::as_slice)
    }
}

/// ureq's resolver for `http-download`: see the module docs.
#[derive(Debug)]
pub(crate) struct GuardedResolver {
    pub allow_private_networks: bool,
    pub test: Option<TestResolve>,
}

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let bad = || ureq::Error::BadUri(format!("{uri}: no host and port to connect to"));
        let authority = uri.authority().ok_or_else(bad)?;
        let port = authority
            .port_u16()
            .or(match uri.scheme_str() {
                Some("http") => Some(80),
                Some("https") => Some(443),
                _ => None,
            })
            .ok_or_else(bad)?;
        let host = authority.host();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let mut from_test = false;
        let addrs: Vec<SocketAddr> = if let Ok(ip) = bare.parse::<IpAddr>() {
            vec![SocketAddr::new(ip, port)]
        } else if let Some(ips) = self.test.as_ref().and_then(|t| t.lookup(bare)) {
            from_test = true;
            ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
        } else {
            lookup_within(bare, port, timeout, system_lookup)?
        };
        let mut approved = self.empty();
        let mut refused = Vec::new();
        for addr in config.ip_family().keep_wanted(addrs.into_iter()) {
            let why = if self.allow_private_networks || (from_test && addr.ip() == TEST_PUBLIC) {
                None
            } else {
                forbidden(addr.ip())
            };
            match why {
                // Beyond ureq's capacity, further addresses are left out, as ureq does.
                None => {
                    let _ = approved.try_push(addr);
                }
                Some(why) => refused.push(format!("{} ({why})", addr.ip())),
            }
        }
        if !approved.is_empty() {
            return Ok(approved);
        }
        if refused.is_empty() {
            return Err(GuardError::unresolved(bare, "no address").into());
        }
        Err(GuardError {
            permanent: true,
            message: format!(
                "refused: `{bare}` resolves to {}; set `allow_private_networks = true` to allow it",
                refused.join(", ")
            ),
        }
        .into())
    }
}

/// The system's resolver.
fn system_lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

/// `lookup(host, port)`, given at most `timeout`: on a thread of its own, left behind if it
/// takes longer (the system resolver cannot be interrupted; it ends on its own timeouts).
fn lookup_within(
    host: &str,
    port: u16,
    timeout: NextTimeout,
    lookup: fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>,
) -> Result<Vec<SocketAddr>, ureq::Error> {
    let found = if timeout.after.is_not_happening() {
        lookup(host, port)
    } else {
        let wait: Duration = *timeout.after;
        if wait.is_zero() {
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let name = host.to_owned();
        std::thread::Builder::new()
            .name("http-download-dns".into())
            .spawn(move || {
                let _ = tx.send(lookup(&name, port));
            })
            .map_err(|e| GuardError::unresolved(host, &e.to_string()))?;
        match rx.recv_timeout(wait) {
            Ok(found) => found,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(ureq::Error::Timeout(timeout.reason))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(std::io::Error::other(
                "the resolver's thread ended without an answer",
            )),
        }
    };
    found.map_err(|e| GuardError::unresolved(host, &e.to_string()).into())
}

/// A refusal or a failed lookup, carried through ureq as an I/O error and turned back into a
/// [`StageError`] by [`stage_error`].
#[derive(Debug)]
struct GuardError {
    permanent: bool,
    message: String,
}

impl GuardError {
    fn unresolved(host: &str, why: &str) -> GuardError {
        GuardError {
            permanent: false,
            message: format!("cannot resolve `{host}`: {why}"),
        }
    }
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for GuardError {}

impl From<GuardError> for ureq::Error {
    fn from(e: GuardError) -> ureq::Error {
        ureq::Error::Io(std::io::Error::other(e))
    }
}

/// The stage's error for a request the guard stopped: a refusal is permanent, a failed lookup
/// transient. `None` for any other failure.
pub(crate) fn stage_error(e: &ureq::Error) -> Option<StageError> {
    let ureq::Error::Io(io) = e else {
        return None;
    };
    let guard = io.get_ref()?.downcast_ref::<GuardError>()?;
    Some(if guard.permanent {
        StageError::permanent(guard.message.clone())
            .with_kind(stagewise_core::stage::ErrorKind::InvalidInput)
    } else {
        StageError::transient(guard.message.clone())
            .with_kind(stagewise_core::stage::ErrorKind::Connect)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagewise_core::stage::ErrorClass;
    use ureq::unversioned::transport::time;

    /// Refused (with the reason's start) and allowed examples for every range.
    #[test]
    fn classifies_addresses() {
        let refused = [
            ("168.63.129.16", "cloud host service"),
            ("169.254.169.254", "cloud metadata"),
            ("100.100.100.200", "cloud metadata"),
            ("0.0.0.0", "\"this network\""),
            ("0.1.2.3", "\"this network\""),
            ("10.1.2.3", "private"),
            ("100.64.0.1", "shared"),
            ("100.127.255.254", "shared"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.1.1", "link-local"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.0.0.8", "IETF"),
            ("192.0.0.170", "IETF"),
            ("192.0.2.1", "documentation"),
            ("192.88.99.1", "6to4"),
            ("192.168.1.1", "private"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.254", "benchmarking"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.254", "reserved"),
            ("255.255.255.255", "broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::10.0.0.1", "IPv4-compatible"),
            ("::8.8.8.8", "IPv4-compatible"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:0:169.254.169.254", "cloud metadata"),
            ("64:ff9b::a00:1", "private"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("64:ff9b:1:ffff::808:808", "local-use NAT64"),
            ("100::1", "discard-only"),
            ("2001::1", "Teredo"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            ("2001:2::1", "IETF"),
            ("2001:1ff::1", "IETF"),
            ("2001:db8::1", "documentation"),
            ("2002:c0a8:0101::1", "private"),
            ("2002:7f00:1::", "loopback"),
            ("2002:a9fe:a9fe::1", "cloud metadata"),
            ("3fff::1", "documentation"),
            ("3fff:fff::1", "documentation"),
            ("5f00::1", "segment routing"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fd00::1", "private"),
            ("fc00::1", "private"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("feff::1", "site-local"),
            ("ff02::1", "multicast"),
            ("4000::1", "reserved"),
            ("::2", "IPv4-compatible"),
        ];
        for (ip, why) in refused {
            let addr: IpAddr = ip.parse().expect("valid address");
            let got = forbidden(addr).unwrap_or_else(|| panic!("{ip} must be refused"));
            assert!(got.starts_with(why), "{ip}: {got:?}, expected {why:?}");
        }
        let allowed = [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "168.63.129.17",
            "169.253.255.255",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.0.3.1",
            "192.31.196.1",
            "192.88.98.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "198.51.101.1",
            "203.0.114.1",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "::ffff:0:8.8.8.8",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "2001:200::1",
            "2001:4860:4860::8888",
            "2001:db7:ffff::1",
            "2001:db9::1",
            "2606:2800:220:1::",
            "2a00:1450:4001::1",
            "3fff:1000::1",
            "3ffe::1",
        ];
        for ip in allowed {
            let addr: IpAddr = ip.parse().expect("valid address");
            assert_eq!(forbidden(addr), None, "{ip} must be allowed");
        }
    }

    fn uri(text: &str) -> Uri {
        text.parse().expect("a valid URI")
    }

    fn within(d: Duration) -> NextTimeout {
        NextTimeout {
            after: time::Duration::from(d),
            reason: ureq::Timeout::Global,
            ..NextTimeout::default()
        }
    }

    fn resolver(allow: bool, test: &str) -> GuardedResolver {
        GuardedResolver {
            allow_private_networks: allow,
            test: Some(TestResolve::parse(test).expect("a valid hook")),
        }
    }

    fn resolve(r: &GuardedResolver, url: &str) -> Result<Vec<SocketAddr>, ureq::Error> {
        r.resolve(
            &uri(url),
            &Config::default(),
            within(Duration::from_secs(5)),
        )
        .map(|a| a.to_vec())
    }

    #[test]
    fn only_the_approved_addresses_are_handed_to_the_client() {
        let r = resolver(
            false,
            "mixed.test=127.0.0.2,127.0.0.1,::1;local.test=127.0.0.1,10.0.0.1",
        );
        let addrs = resolve(&r, "http://Mixed.TEST:8080/a").expect("one approved");
        assert_eq!(addrs, vec!["127.0.0.2:8080".parse().expect("an address")]);
        let e = resolve(&r, "https://local.test/").expect_err("all refused");
        let e = stage_error(&e).expect("the guard's error");
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(
            e.message.contains("`local.test`")
                && e.message.contains("127.0.0.1 (loopback)")
                && e.message.contains("10.0.0.1 (private)")
                && e.message.contains("allow_private_networks"),
            "{}",
            e.message
        );
        // 127.0.0.2 is public only as the hook's answer for a `.test` name.
        let e = resolve(&r, "http://127.0.0.2/").expect_err("a literal loopback");
        assert!(stage_error(&e).is_some_and(|e| e.message.contains("127.0.0.2 (loopback)")));
        let e = resolve(&r, "http://[::1]:81/").expect_err("a literal loopback");
        assert!(stage_error(&e).is_some_and(|e| e.message.contains("::1 (loopback)")));
        let open = resolver(true, "local.test=127.0.0.1,10.0.0.1");
        assert_eq!(
            resolve(&open, "http://local.test/").expect("allowed").len(),
            2
        );
        assert!(resolve(&open, "http://[::1]:81/").is_ok());
    }

    #[test]
    fn the_test_hook_takes_only_test_names() {
        assert!(TestResolve::parse("example.com=127.0.0.2").is_err());
        assert!(TestResolve::parse("a.test=not-an-address").is_err());
        assert!(TestResolve::parse("a.test").is_err());
        let hook = TestResolve::parse(" a.test = 127.0.0.2 , ::1 ; ").expect("valid");
        assert_eq!(hook.lookup("A.test.").map(<[IpAddr]>::len), Some(2));
        assert_eq!(hook.lookup("b.test"), None);
    }

    fn hangs(_: &str, _: u16) -> std::io::Result<Vec<SocketAddr>> {
        std::thread::sleep(Duration::from_secs(5));
        Ok(Vec::new())
    }

    fn fails(_: &str, _: u16) -> std::io::Result<Vec<SocketAddr>> {
        Err(std::io::Error::other("no such name"))
    }

    #[test]
    fn a_lookup_ends_at_its_timeout() {
        let started = std::time::Instant::now();
        let e = lookup_within(
            "slow.example",
            80,
            within(Duration::from_millis(100)),
            hangs,
        )
        .expect_err("it hangs");
        assert!(
            matches!(e, ureq::Error::Timeout(ureq::Timeout::Global)),
            "{e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let e = lookup_within("nowhere.example", 80, within(Duration::from_secs(1)), fails)
            .expect_err("it fails");
        let e = stage_error(&e).expect("the guard's error");
        assert_eq!(e.class, ErrorClass::Transient);
        assert!(
            e.message
                .contains("cannot resolve `nowhere.example`: no such name"),
            "{}",
            e.message
        );
        let e = lookup_within("x.example", 80, within(Duration::ZERO), fails).expect_err("no time");
        assert!(matches!(e, ureq::Error::Timeout(_)), "{e}");
    }
}
