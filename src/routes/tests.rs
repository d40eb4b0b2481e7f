use super::*;
use crate::balancer::Balancing;
use std::net::SocketAddr;

fn spec(name: &str, host: &str, prefix: &str, port: u16) -> RouteSpec {
    RouteSpec {
        name: name.into(),
        host: HostMatch::parse(host).unwrap(),
        path_prefix: prefix.into(),
        backends: vec![SocketAddr::from(([127, 0, 0, 1], port)).into()],
        balancing: Balancing::default(),
        health: None,
        extensions: Default::default(),
        field: "".into(),
    }
}

fn router(specs: &[RouteSpec]) -> Router {
    let r = Router::new(crate::balancer::affinity::Keyring::new(None));
    r.configure(specs, None);
    r
}

fn route_of(r: &Router, host: &str, path: &str) -> Option<String> {
    let t = r.table();
    t.find(host.as_bytes(), path)
        .map(|i| t.routes[i].spec.name.to_string())
}

#[test]
fn hosts_parse() {
    assert_eq!(HostMatch::parse(""), Ok(HostMatch::Any));
    assert_eq!(
        HostMatch::parse("Chat.Example.com"),
        Ok(HostMatch::Exact("chat.example.com".into()))
    );
    assert_eq!(
        HostMatch::parse("*.example.com"),
        Ok(HostMatch::Wildcard(".example.com".into()))
    );
    assert!(HostMatch::parse("[::1]").is_ok());
    for bad in [
        "example.com:8080",
        "http://example.com",
        "*example.com",
        "a.*.com",
        "*.",
        ".example.com",
        "a..b",
        "exa mple.com",
        "[zz]",
    ] {
        assert!(HostMatch::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn most_specific_host_then_longest_prefix() {
    let r = router(&[
        spec("default", "", "/", 1),
        spec("any-ws", "", "/ws", 2),
        spec("chat", "chat.example.com", "/", 3),
        spec("chat-ws", "chat.example.com", "/ws", 4),
        spec("wild", "*.example.com", "/", 5),
        spec("deep-wild", "*.eu.example.com", "/", 6),
    ]);
    for (host, path, want) in [
        ("other.org", "/", "default"),
        ("other.org", "/ws", "any-ws"),
        ("other.org", "/ws/room?x=1", "any-ws"),
        ("other.org", "/ws?x=1", "any-ws"),
        ("other.org", "/wsx", "default"),
        ("chat.example.com", "/ws/a", "chat-ws"),
        ("CHAT.example.COM:8080", "/ws", "chat-ws"),
        ("chat.example.com", "/other", "chat"),
        ("a.example.com", "/ws", "wild"),
        ("a.b.example.com", "/", "wild"),
        ("x.eu.example.com", "/", "deep-wild"),
        ("example.com", "/", "default"),
        ("[::1]:8080", "/ws", "any-ws"),
    ] {
        assert_eq!(
            route_of(&r, host, path).as_deref(),
            Some(want),
            "{host} {path}"
        );
    }
}

#[test]
fn no_match_is_none_and_a_trailing_slash_prefix_takes_what_starts_with_it() {
    let r = router(&[
        spec("chat", "chat.example.com", "/ws/", 1),
        spec("api", "", "/api", 2),
    ]);
    assert_eq!(
        route_of(&r, "chat.example.com", "/ws/x").as_deref(),
        Some("chat")
    );
    assert_eq!(route_of(&r, "chat.example.com", "/ws"), None);
    assert_eq!(route_of(&r, "other", "/"), None);
    assert_eq!(route_of(&r, "other", "/api/v1").as_deref(), Some("api"));
}

#[test]
fn a_reload_keeps_a_kept_routes_pool_and_retires_a_removed_routes_backends() {
    let r = Router::new(crate::balancer::affinity::Keyring::new(None));
    r.configure(&[spec("a", "", "/a", 1), spec("b", "", "/b", 2)], None);
    let before = r.table();
    let pool_a = before
        .routes
        .iter()
        .find(|x| &*x.spec.name == "a")
        .unwrap()
        .pool
        .clone();
    let b_id = before
        .routes
        .iter()
        .find(|x| &*x.spec.name == "b")
        .unwrap()
        .pool
        .snapshot()
        .backends[0]
        .id;
    let change = r.configure(&[spec("a", "", "/a", 3), spec("c", "", "/c", 4)], None);
    assert_eq!(change.added, vec![Box::from("c")]);
    assert_eq!(change.removed, vec![Box::from("b")]);
    assert_eq!(
        change.retired,
        vec![(b_id, SocketAddr::from(([127, 0, 0, 1], 2)))]
    );
    assert_eq!(change.backends.len(), 1, "route a's backend changed");
    let after = r.table();
    let kept = after.routes.iter().find(|x| &*x.spec.name == "a").unwrap();
    assert!(Arc::ptr_eq(&kept.pool, &pool_a), "route a kept its pool");
}

/// Issue 19: the secret is the instance's, so a change of it reaches every route's pool,
/// sticky or not, kept or new, at the configure that follows it.
#[test]
fn a_changed_sticky_secret_reaches_every_routes_snapshot() {
    use crate::balancer::affinity::{Key, Keyring};
    let sticky = |name: &str, prefix: &str, port: u16| {
        let mut s = spec(name, "", prefix, port);
        s.balancing.sticky = Some("srv".into());
        s
    };
    let old = Key::from_secret(b"the old secret, 16+");
    let new = Key::from_secret(b"the new secret, 16+");
    let r = Router::new(Keyring::with_drawn(old.clone(), None));
    r.configure(&[sticky("a", "/a", 1), spec("b", "", "/b", 2)], None);
    assert!(r.set_sticky_secret(Some(b"the new secret, 16+")));
    r.configure(
        &[
            sticky("a", "/a", 1),
            sticky("b", "/b", 2),
            sticky("c", "/c", 3),
        ],
        None,
    );
    for route in &r.table().routes {
        let snap = route.pool.snapshot();
        let addr = snap.backends[0].addr;
        let st = snap.sticky.as_ref().unwrap();
        assert_eq!(
            *st.token(0),
            new.token(addr),
            "{}: new cookies",
            route.spec.name
        );
        let named = st.lookup(old.token(addr).as_str().as_bytes());
        assert_eq!(named.map(|n| (n.backend, n.stale)), Some((0, true)));
    }
}

#[test]
fn a_worker_sees_new_routes_at_its_next_request() {
    let r = Arc::new(router(&[spec("a", "", "/", 1)]));
    let local = LocalRoutes::new(r.clone());
    let t = local.current();
    assert_eq!(t.pools.len(), 1);
    r.configure(&[spec("a", "", "/", 1), spec("b", "", "/b", 2)], None);
    assert_eq!(t.pools.len(), 1, "a copy in hand is unchanged");
    assert_eq!(local.current().pools.len(), 2);
}

#[test]
fn check_names_duplicates_and_overlaps() {
    let (problems, warnings) = check(&[
        spec("a", "", "/ws", 1),
        spec("b", "", "/ws", 2),
        spec("c", "chat.example.com", "/", 3),
        spec("d", "*.example.com", "/live", 4),
    ]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, "b");
    // a and b (/ws, any host) are shadowed for chat.example.com by c (/); d too.
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    let (problems, warnings) = check(&[
        spec("a", "", "/", 1),
        spec("b", "chat.example.com", "/ws", 2),
    ]);
    assert!(problems.is_empty() && warnings.is_empty(), "{warnings:?}");
}
