//! The reloader against a router and admission of its own (no workers): what it applies
//! and what it reports.

use super::*;
use crate::config::Config;

fn settings(toml: &str) -> Settings {
    Config::from_toml(toml).unwrap().validate().unwrap()
}

#[test]
fn backends_change_and_fixed_fields_are_named() {
    let old = settings(r#"backends = ["127.0.0.1:9001", "127.0.0.1:9002"]"#);
    let router = Arc::new(Router::new(crate::balancer::affinity::Keyring::new(None)));
    router.configure(&old.routes, None);
    let (workers, mut inboxes) = crate::control::channels(1);
    let admission = ConnectionLimit::new(100);
    let mut r = Reloader::new(
        &old,
        Default::default(),
        router,
        Rewake::default(),
        crate::balancer::rebalance::Configure::detached(),
        workers,
        None,
        admission.clone(),
    );
    let new = settings(
        r#"
        backends = ["127.0.0.1:9002", "127.0.0.1:9003"]
        listen = "127.0.0.1:8081"
        [timeouts]
        removed_backend_drain_ms = 1000
        [limits]
        max_connections_per_ip = 2
        handshake_rate_per_ip = 5
        [keepalive]
        ping_interval_ms = 0
        "#,
    );
    let applied = r.apply(&new, Default::default());
    assert_eq!(
        admission.per_ip().limits(),
        crate::per_ip::PerIpLimits {
            max_connections: 2,
            rate: 5,
            burst: 5
        },
        "per-client limits are reloadable"
    );
    assert_eq!(
        applied.backends.added,
        vec!["127.0.0.1:9003".parse().unwrap()]
    );
    assert_eq!(
        applied.backends.removed,
        vec![(0, "127.0.0.1:9001".parse().unwrap())]
    );
    assert_eq!(applied.needs_restart, vec!["listen", "keepalive"]);
    assert_eq!(
        applied.applied,
        [
            "backends",
            "limits.handshake_burst_per_ip",
            "limits.handshake_rate_per_ip",
            "limits.max_connections_per_ip",
            "timeouts.removed_backend_drain_ms"
        ]
    );
    assert_eq!(r.retired.len(), 1);
    assert!(r.retired[0].deadline.is_some());
    let sent = inboxes[0].try_recv();
    assert_eq!(sent, Some(Control::Retire(r.retired.clone())));
    // 9001 added back: no longer retired (9003, removed now, is).
    let back = settings(r#"backends = ["127.0.0.1:9001", "127.0.0.1:9002"]"#);
    r.apply(&back, Default::default());
    let ids: Vec<u32> = r.retired.iter().map(|r| r.backend).collect();
    assert_eq!(ids, [2]);
}
