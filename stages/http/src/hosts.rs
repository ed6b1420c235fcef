//! Safety per host: no requests to addresses a URL from the outside should never reach. (At most
//! `per_host_concurrency` requests to one host at once: the stage's lanes, kept by the runner.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

/// Why an address is not for a URL from the outside, if it is not.
pub(crate) fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            // IPv4 inside IPv6: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d), NAT64
            // (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::).
            let embedded = v6.to_ipv4_mapped().or_else(|| {
                let tail = Ipv4Addr::new(
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                );
                let compatible = seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified();
                let nat64 = seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
                if compatible || nat64 {
                    Some(tail)
                } else if seg[0] == 0x2002 {
                    Some(Ipv4Addr::new(
                        (seg[1] >> 8) as u8,
                        seg[1] as u8,
                        (seg[2] >> 8) as u8,
                        seg[2] as u8,
                    ))
                } else {
                    None
                }
            });
            if let Some(v4) = embedded {
                return forbidden_v4(v4);
            }
            if v6.is_multicast() {
                return Some("multicast");
            }
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (v6.segments()[0] & 0xfe00) == 0xfc00 {
                Some("private (unique local)")
            } else if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("cloud metadata")
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = v4.octets();
    if v4.is_loopback() {
        Some("loopback")
    } else if v4.is_private() {
        Some("private")
    } else if v4.is_link_local() {
        // 169.254.169.254, the cloud metadata service, is here too.
        Some("link-local or cloud metadata")
    } else if v4.is_unspecified() || v4.is_broadcast() || a == 0 {
        Some("unspecified or broadcast")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if v4.is_multicast() || a >= 240 {
        Some("multicast or reserved")
    } else {
        None
    }
}

/// Resolve `host:port` and refuse it if any address is forbidden.
pub(crate) fn check_host(host: &str, port: u16) -> Result<(), String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .collect();
    for addr in addrs {
        if let Some(why) = forbidden(addr.ip()) {
            return Err(format!(
                "refused: `{host}` resolves to {} ({why}); set `allow_private_networks = true` to allow it",
                addr.ip()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        let cases = [
            ("127.0.0.1", true),
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("100.64.0.1", true),
            ("0.0.0.0", true),
            ("::1", true),
            ("fd00::1", true),
            ("fe80::1", true),
            ("::ffff:127.0.0.1", true),
            ("::10.0.0.1", true),
            ("64:ff9b::a00:1", true),
            ("2002:c0a8:0101::1", true),
            ("ff02::1", true),
            ("224.0.0.1", true),
            ("240.0.0.1", true),
            ("64:ff9b::5db8:d822", false),
            ("93.184.216.34", false),
            ("2606:2800:220:1::", false),
        ];
        for (ip, refused) in cases {
            let ip: IpAddr = ip.parse().expect("valid address");
            assert_eq!(forbidden(ip).is_some(), refused, "{ip}");
        }
    }

    #[test]
    fn a_literal_private_address_is_refused_without_a_lookup() {
        let err = check_host("127.0.0.1", 80).expect_err("loopback");
        assert!(
            err.contains("127.0.0.1") && err.contains("loopback"),
            "{err}"
        );
        assert!(check_host("[::1]", 80).is_err());
    }
}
