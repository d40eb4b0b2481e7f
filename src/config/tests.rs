//! Config parsing and validation, checked field by field.

use super::*;

/// The commented example shows the real defaults and stays valid.
#[test]
fn example_file_is_valid_and_shows_the_defaults() {
    let example = Config::from_toml(include_str!("../../wslb.example.toml")).unwrap();
    let defaults = Config {
        backends: example.backends.clone(),
        ..Config::default()
    };
    assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    example.validate().unwrap();
}

#[test]
fn defaults_need_only_backends() {
    let c = Config::from_toml(r#"backends = ["127.0.0.1:9001"]"#).unwrap();
    let s = c.validate().unwrap();
    assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(s.max_frame_bytes, 16 << 20);
    assert!(s.workers >= 1);
}

#[test]
fn every_problem_is_named() {
    let c = Config::from_toml(
        r#"
        listen = "nope"
        backends = ["127.0.0.1:9001", "127.0.0.1", "127.0.0.1:0"]
        [timeouts]
        close_grace_ms = 0
        [limits]
        max_request_bytes = 10
        "#,
    )
    .unwrap();
    let Err(ConfigError::Invalid(p)) = c.validate() else {
        panic!("expected invalid")
    };
    let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "listen",
            "backends[1]",
            "backends[2]",
            "timeouts.close_grace_ms",
            "limits.max_request_bytes"
        ]
    );
}

#[test]
fn unknown_field_is_rejected() {
    let e = Config::from_toml("backend = [\"127.0.0.1:1\"]").unwrap_err();
    assert!(e.contains("unknown field `backend`"), "{e}");
}

#[test]
fn wss_backends_are_reached_over_tls_by_the_host_they_name() {
    let s = Config::from_toml(
        r#"
        backends = ["wss://localhost:9443/", "ws://127.0.0.1:9000", "127.0.0.1:9001"]
        [tls_backend]
        insecure_skip_verify = true
        "#,
    )
    .unwrap()
    .validate()
    .unwrap();
    // localhost resolves to 127.0.0.1 here; the name it was written with is kept, on the
    // backend itself.
    let tls: Vec<_> = s.routes[0]
        .backends
        .iter()
        .map(|b| (b.addr, b.tls.clone()))
        .collect();
    let localhost = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert_eq!(
        tls,
        [
            ("127.0.0.1:9443".parse().unwrap(), Some(localhost)),
            ("127.0.0.1:9000".parse().unwrap(), None),
            ("127.0.0.1:9001".parse().unwrap(), None),
        ]
    );
    assert!(s.tls_backend.is_some());
    let plain = Config::from_toml(r#"backends = ["127.0.0.1:9001"]"#).unwrap();
    assert!(plain.validate().unwrap().tls_backend.is_none());
}

#[test]
fn one_backend_has_one_weight_and_power_of_two_takes_none() {
    let c = Config::from_toml(
        r#"
        algorithm = "least-connections"
        backends = ["127.0.0.1:9000", { address = "127.0.0.1:9000", weight = 5 }]
        "#,
    )
    .unwrap();
    let Err(ConfigError::Invalid(p)) = c.validate() else {
        panic!("expected invalid")
    };
    assert_eq!(p[0].field, "backends[1]", "{p:?}");
    let c = Config::from_toml(
        r#"
        algorithm = "power-of-two"
        backends = [{ address = "127.0.0.1:9000", weight = 5 }, "127.0.0.1:9001"]
        "#,
    )
    .unwrap();
    let Err(ConfigError::Invalid(p)) = c.validate() else {
        panic!("expected invalid")
    };
    assert_eq!(p[0].field, "backends[0].weight", "{p:?}");
    assert!(
        p[0].message.contains("power-of-two ignores weights"),
        "{p:?}"
    );
}

#[test]
fn one_address_is_reached_one_way() {
    let c = Config::from_toml(
        r#"
        backends = ["wss://127.0.0.1:9443", "ws://127.0.0.1:9443", "127.0.0.1:9000", "127.0.0.1:9000"]
        [tls_backend]
        insecure_skip_verify = true
        "#,
    )
    .unwrap();
    let Err(ConfigError::Invalid(p)) = c.validate() else {
        panic!("expected invalid")
    };
    // The plain one written twice is the same backend; TLS and plain on one address
    // cannot both be meant.
    let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["backends[1]"], "{p:?}");
}

#[test]
fn backends_with_weights_and_an_algorithm() {
    let s = Config::from_toml(
        r#"
        algorithm = "weighted-round-robin"
        slow_start_ms = 30000
        backends = ["127.0.0.1:9001", { address = "ws://127.0.0.1:9002", weight = 3 },
                    { address = "127.0.0.1:9003" }]
        "#,
    )
    .unwrap()
    .validate()
    .unwrap();
    let w: Vec<(u16, u32)> = s.routes[0]
        .backends
        .iter()
        .map(|b| (b.addr.port(), b.weight))
        .collect();
    assert_eq!(w, [(9001, 1), (9002, 3), (9003, 1)]);
    assert_eq!(
        s.routes[0].balancing.algorithm,
        super::Algorithm::WeightedRoundRobin
    );
    assert_eq!(
        s.routes[0].balancing.slow_start,
        Some(std::time::Duration::from_secs(30))
    );
    let ch = Config::from_toml(
        r#"
        algorithm = "consistent-hash"
        hash_key = "cookie:sid"
        backends = ["127.0.0.1:9001"]
        "#,
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(
        ch.routes[0].balancing.hash_key,
        super::HashKey::Cookie("sid".into())
    );
}

#[test]
fn balancing_problems_are_named() {
    let e =
        Config::from_toml(r#"backends = [{ address = "127.0.0.1:1", wieght = 2 }]"#).unwrap_err();
    assert!(e.contains("unknown field `wieght`"), "{e}");
    let e = Config::from_toml(r#"algorithm = "random""#).unwrap_err();
    assert!(e.contains("unknown variant `random`"), "{e}");
    let c = Config::from_toml(
        r#"
        hash_key = "header:"
        slow_start_ms = 1000
        backends = [{ address = "127.0.0.1:9001", weight = 0 },
                    { address = "127.0.0.1:9002", weight = 2 },
                    { address = "nope", weight = 1001 }]
        "#,
    )
    .unwrap();
    let Err(ConfigError::Invalid(p)) = c.validate() else {
        panic!("expected invalid")
    };
    let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "backends[0].weight",
            "backends[1].weight",
            "backends[2].weight",
            "backends[2]",
            "hash_key",
            "slow_start_ms"
        ],
        "{p:?}"
    );
}

#[test]
fn no_backends_is_a_problem() {
    let Err(ConfigError::Invalid(p)) = Config::default().validate() else {
        panic!()
    };
    assert_eq!(p[0].field, "backends");
}

#[test]
fn per_ip_limits_resolve_and_their_problems_are_named() {
    let s = |extra: &str| {
        Config::from_toml(&format!(
            "backends = [\"127.0.0.1:9001\"]\n[limits]\n{extra}"
        ))
        .unwrap()
        .validate()
    };
    let off = s("").unwrap().per_ip;
    assert_eq!(off, super::PerIpLimits::default());
    let p = s("max_connections_per_ip = 10\nhandshake_rate_per_ip = 5")
        .unwrap()
        .per_ip;
    assert_eq!(
        (p.max_connections, p.rate, p.burst),
        (10, 5, 5),
        "burst 0 = rate"
    );
    let p = s("handshake_rate_per_ip = 5\nhandshake_burst_per_ip = 20")
        .unwrap()
        .per_ip;
    assert_eq!(p.burst, 20);
    let Err(ConfigError::Invalid(p)) = s("max_connections_per_ip = 1000001\n\
         handshake_rate_per_ip = 0\nhandshake_burst_per_ip = 200000")
    else {
        panic!("expected invalid")
    };
    let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "limits.max_connections_per_ip",
            "limits.handshake_burst_per_ip",
            "limits.handshake_burst_per_ip"
        ],
        "{p:?}"
    );
}

#[test]
fn routes_take_the_top_level_defaults_and_their_own_fields() {
    let s = Config::from_toml(
        r#"
        backends = ["127.0.0.1:9001"]
        algorithm = "least-connections"
        [health]
        interval_ms = 500
        [[routes]]
        host = "chat.example.com"
        path_prefix = "/ws"
        backends = ["127.0.0.1:9002", { address = "127.0.0.1:9003", weight = 3 }]
        [[routes]]
        name = "api"
        path_prefix = "/api"
        backends = ["127.0.0.1:9004"]
        algorithm = "consistent-hash"
        hash_key = "header:X-User"
        sticky = "cookie"
        sticky_cookie = "srv"
        [routes.health]
        enabled = false
        "#,
    )
    .unwrap()
    .validate()
    .unwrap();
    let names: Vec<&str> = s.routes.iter().map(|r| &*r.name).collect();
    assert_eq!(names, ["default", "chat.example.com/ws", "api"]);
    let chat = &s.routes[1];
    assert_eq!(chat.balancing.algorithm, super::Algorithm::LeastConnections);
    assert_eq!(chat.backends[1].weight, 3);
    assert_eq!(
        chat.health.as_ref().unwrap().interval,
        std::time::Duration::from_millis(500)
    );
    let api = &s.routes[2];
    assert_eq!(api.balancing.sticky.as_deref(), Some("srv"));
    assert!(api.health.is_none());
    assert!(s.routes[0].balancing.sticky.is_none());
    assert!(
        s.warnings.iter().any(|w| w.contains("sticky_secret")),
        "{:?}",
        s.warnings
    );
}

#[test]
fn bad_routes_are_named() {
    let problems = |toml: &str| match Config::from_toml(toml).unwrap().validate() {
        Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| p.field).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        problems(
            r#"
            [[routes]]
            host = "chat.example.com:80"
            path_prefix = "ws"
            backends = []
            algorithm = "round-robin"
            hash_key = "header:X"
            sticky = "cookie"
            sticky_cookie = "a b"
            [routes.health]
            rise = 0
            "#
        ),
        [
            "routes[0].backends",
            "routes[0].host",
            "routes[0].path_prefix",
            "routes[0].hash_key",
            "routes[0].sticky_cookie",
            "routes[0].health.rise",
        ]
    );
    assert_eq!(
        problems(
            r#"
            backends = ["127.0.0.1:9001"]
            [[routes]]
            backends = ["127.0.0.1:9002"]
            "#
        ),
        ["routes (*/)"],
        "a route of any host and / is the default route's place"
    );
    assert_eq!(
        problems(
            r#"
            backends = ["wss://127.0.0.1:9001"]
            [[routes]]
            path_prefix = "/x"
            backends = ["127.0.0.1:9001"]
            [[routes]]
            name = "x"
            path_prefix = "/y"
            backends = ["127.0.0.1:9002"]
            [[routes]]
            name = "x"
            path_prefix = "/z"
            backends = ["127.0.0.1:9003"]
            "#
        ),
        ["routes[0].backends[0]", "routes[2].name"]
    );
    assert_eq!(problems(""), ["backends"]);
    assert_eq!(
        problems(
            r#"
            backends = ["127.0.0.1:9001"]
            sticky_secret = "short"
            [rebalance]
            tolerance = 0
            max_per_second = 0
            interval_ms = 5
            "#
        ),
        [
            "sticky_secret",
            "rebalance.tolerance",
            "rebalance.max_per_second",
            "rebalance.interval_ms"
        ]
    );
}

#[test]
fn rebalancing_leaves_routes_whose_key_decides_the_backend_and_says_so() {
    let s = Config::from_toml(
        r#"
        backends = ["127.0.0.1:9001", "127.0.0.1:9002"]
        [rebalance]
        enabled = true
        [[routes]]
        name = "hashed"
        path_prefix = "/h"
        algorithm = "consistent-hash"
        backends = ["127.0.0.1:9003"]
        [[routes]]
        name = "pinned"
        path_prefix = "/p"
        sticky = "cookie"
        backends = ["127.0.0.1:9004"]
        "#,
    )
    .unwrap()
    .validate()
    .unwrap();
    let moved: Vec<bool> = s
        .routes
        .iter()
        .map(|r| super::rebalances(&r.balancing))
        .collect();
    assert_eq!(moved, [true, false, false]);
    let notes: Vec<&String> = s
        .warnings
        .iter()
        .filter(|w| w.contains("is not rebalanced"))
        .collect();
    assert_eq!(notes.len(), 2, "{notes:?}");
}

/// Regression (issue 20, found by a new user): a route with an algorithm of its own was
/// refused over the top-level `hash_key` it inherited and never wrote
/// (`routes[0].hash_key: least-connections does not hash`).
#[test]
fn a_route_with_its_own_algorithm_does_not_inherit_a_hash_key_it_cannot_use() {
    let s = Config::from_toml(
        r#"
        algorithm = "consistent-hash"
        hash_key = "query:room"
        backends = ["127.0.0.1:9001"]
        [[routes]]
        path_prefix = "/live"
        algorithm = "least-connections"
        backends = ["127.0.0.1:9002"]
        "#,
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(
        s.routes[0].balancing.hash_key,
        HashKey::Query("room".into())
    );
    assert_eq!(s.routes[1].balancing.algorithm, Algorithm::LeastConnections);
    assert_eq!(s.routes[1].balancing.hash_key, HashKey::Ip);
}

/// The same for `slow_start_ms`, which only the ramping algorithms use; a route that
/// keeps the default algorithm inherits both fields, and one that hashes inherits the key.
#[test]
fn inherited_fields_are_only_those_that_apply() {
    let s = Config::from_toml(
        r#"
        algorithm = "least-connections"
        slow_start_ms = 5000
        hash_key = "ip"
        backends = ["127.0.0.1:9001"]
        [[routes]]
        path_prefix = "/hash"
        algorithm = "consistent-hash"
        backends = ["127.0.0.1:9002"]
        [[routes]]
        path_prefix = "/same"
        backends = ["127.0.0.1:9003"]
        "#,
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(s.routes[1].balancing.slow_start, None);
    assert_eq!(
        s.routes[2].balancing.slow_start,
        Some(std::time::Duration::from_secs(5))
    );
    let s = Config::from_toml(
        r#"
        algorithm = "consistent-hash"
        hash_key = "header:X-User"
        backends = ["127.0.0.1:9001"]
        [[routes]]
        path_prefix = "/hash"
        algorithm = "consistent-hash"
        backends = ["127.0.0.1:9002"]
        "#,
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(
        s.routes[1].balancing.hash_key,
        HashKey::Header("X-User".into())
    );
}

/// A problem with an inherited value is named once, where it is written, not once per
/// route that inherits it; a route's own value is named at the route.
#[test]
fn an_inherited_problem_is_named_where_it_is_written() {
    let problems = |toml: &str| match Config::from_toml(toml).unwrap().validate() {
        Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| p.field).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        problems(
            r#"
            hash_key = "bogus"
            algorithm = "consistent-hash"
            [health]
            fall = 0
            [[routes]]
            path_prefix = "/a"
            backends = ["127.0.0.1:9001"]
            [[routes]]
            path_prefix = "/b"
            backends = ["127.0.0.1:9002"]
            [routes.health]
            rise = 0
            "#
        ),
        ["hash_key", "health.fall", "routes[1].health.rise"]
    );
}

/// Every schema problem is named, in file order, by the path it is written at: an array
/// element after one taken out keeps its index as written.
#[test]
fn every_schema_problem_is_named_where_it_is_written() {
    let parsed = super::schema::parse(
        "backends = [1, \"127.0.0.1:9001\", 2]\n[limits]\nmax_frame_bytes = -1\nbogus = 1\n",
    )
    .unwrap();
    let got: Vec<(String, Option<(usize, usize)>)> = parsed
        .problems
        .iter()
        .map(|p| (p.field.clone(), p.at.map(|l| (l.line, l.column))))
        .collect();
    assert_eq!(
        got,
        [
            ("backends[0]".to_string(), Some((1, 13))),
            ("backends[2]".to_string(), Some((1, 34))),
            ("limits.max_frame_bytes".to_string(), Some((3, 19))),
            ("limits.bogus".to_string(), Some((4, 1))),
        ]
    );
    // What is left validates, and a semantic problem is located too (here: none left).
    let config = parsed.config.as_ref().unwrap();
    assert_eq!(config.backends, ["127.0.0.1:9001".into()]);
    let Err(ConfigError::Invalid(all)) = parsed.validate() else {
        panic!("the schema problems make it invalid")
    };
    assert_eq!(all.len(), 4, "{all:?}");
    // A field validation names but the file does not hold is placed at its table.
    let parsed =
        super::schema::parse("backends = [\"127.0.0.1:9001\"]\n[tls]\ncert = \"c.pem\"\n").unwrap();
    assert_eq!(
        parsed.locate("tls.key"),
        Some(super::Location { line: 2, column: 2 })
    );
}
