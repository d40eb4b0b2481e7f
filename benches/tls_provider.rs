//! Criterion benchmarks that pick wslb's rustls crypto provider: aws-lc-rs against ring.
//!
//!   cargo bench --bench tls_provider -- --warm-up-time 1 --measurement-time 3
//!
//! Every time is this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time: the
//! machine is shared, and wall time would charge a provider for whatever else ran on its
//! core meanwhile (two runs on wall time put the same case at 186 and 451 µs). Another
//! job on the sibling hyperthread or in the caches can still slow a run; compare the two
//! providers within one run, and repeat the run before trusting a difference under ~10%.
//!
//! Everything is in memory: a rustls `ClientConnection` and `ServerConnection` hand bytes to
//! each other through a `Vec` with `write_tls`/`read_tls`, so no socket or kernel time is in
//! any number. Both sides of a connection use the same provider, each with its defaults
//! (what wslb gets without tuning), and the setup asserts what was negotiated so that a
//! changed default cannot silently change what is compared.
//!
//! `handshake/*`: one full handshake, no resumption (client `Resumption::disabled()`, server
//! `send_tls13_tickets = 0`), both sides' work, connection construction included. The
//! certificate chain is leaf + CA of the same key type, the CA being the client's only root,
//! so the client verifies two signatures (the leaf's and the handshake's), one fewer than
//! behind an intermediate.
//! `handshake_server/*`: the same handshake, timed only inside the server's calls
//! (`ServerConnection::new`, `read_tls` + `process_new_packets`, `write_tls`): a TLS
//! terminator pays this per new connection, while the client's share is paid elsewhere.
//! Each of the server's calls costs a pair of clock reads, about `clock/thread-cpu-pair`.
//! `sign/*`: the server's one private-key operation per full handshake, through the
//! provider's `SigningKey` (ECDSA P-256 SHA-256; RSA-PSS SHA-256, which TLS 1.3 requires
//! for RSA), over a TLS 1.3 CertificateVerify-sized input.
//! `record/*`: over an established TLS 1.3 connection, the client encrypts one message and
//! the server decrypts and reads it (rustls' copies included, as wslb would pay them), for
//! each TLS 1.3 suite: AES-256-GCM is the one both providers negotiate by default.
//!
//! rcgen here is built on ring, which cannot generate RSA keys, so the RSA 2048 keys come
//! from `openssl genpkey` (PEM on stdout, nothing written to disk) at bench start.

use std::hint::black_box;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SignatureAlgorithm};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    CipherSuite, ClientConfig, ClientConnection, ConnectionCommon, NamedGroup, RootCertStore,
    ServerConfig, ServerConnection, SideData, SignatureScheme, SupportedCipherSuite,
    SupportedProtocolVersion,
};

/// CPU time this thread has used so far.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call's duration, and
    // CLOCK_THREAD_CPUTIME_ID exists on every Linux this project runs on.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Runs `f` `iters` times and returns the CPU time it took, for `iter_custom`.
fn cpu_timed(iters: u64, mut f: impl FnMut()) -> Duration {
    let start = thread_cpu();
    for _ in 0..iters {
        f();
    }
    thread_cpu() - start
}

/// One provider under test, with the pieces of it that the cases pick by hand.
struct Backend {
    name: &'static str,
    provider: fn() -> CryptoProvider,
    tls13_suites: [(&'static str, SupportedCipherSuite); 3],
}

fn backends() -> [Backend; 2] {
    use rustls::crypto::{aws_lc_rs, ring};
    [
        Backend {
            name: "aws-lc-rs",
            provider: aws_lc_rs::default_provider,
            tls13_suites: [
                (
                    "aes128gcm",
                    aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
                ),
                (
                    "aes256gcm",
                    aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
                ),
                (
                    "chacha20",
                    aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
                ),
            ],
        },
        Backend {
            name: "ring",
            provider: ring::default_provider,
            tls13_suites: [
                ("aes128gcm", ring::cipher_suite::TLS13_AES_128_GCM_SHA256),
                ("aes256gcm", ring::cipher_suite::TLS13_AES_256_GCM_SHA384),
                (
                    "chacha20",
                    ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
                ),
            ],
        },
    ]
}

/// A server's chain and key, and the root its client trusts.
struct Chain {
    leaf: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    ca: CertificateDer<'static>,
}

enum KeyType {
    P256,
    Rsa2048,
}

impl KeyType {
    fn generate(&self) -> KeyPair {
        match self {
            KeyType::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            KeyType::Rsa2048 => {
                let out = Command::new("openssl")
                    .args(["genpkey", "-algorithm", "RSA"])
                    .args(["-pkeyopt", "rsa_keygen_bits:2048"])
                    .output()
                    .expect("openssl genpkey (RSA keys; rcgen on ring cannot make them)");
                assert!(out.status.success(), "openssl genpkey failed");
                let pem = String::from_utf8(out.stdout).unwrap();
                KeyPair::from_pem_and_sign_algo(&pem, self.cert_alg()).unwrap()
            }
        }
    }

    /// The algorithm the CA signs certificates with.
    fn cert_alg(&self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    /// The scheme a TLS 1.3 server signs its CertificateVerify with.
    fn tls13_scheme(&self) -> SignatureScheme {
        match self {
            KeyType::P256 => SignatureScheme::ECDSA_NISTP256_SHA256,
            KeyType::Rsa2048 => SignatureScheme::RSA_PSS_SHA256,
        }
    }

    fn chain(&self) -> Chain {
        let ca_key = self.generate();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = self.generate();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        Chain {
            leaf: leaf.der().clone(),
            key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
            ca: ca.der().clone(),
        }
    }
}

fn configs(
    provider: CryptoProvider,
    version: &'static SupportedProtocolVersion,
    chain: &Chain,
) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let provider = Arc::new(provider);
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![chain.leaf.clone()],
            PrivateKeyDer::Pkcs8(chain.key.clone_key()),
        )
        .unwrap();
    // Full handshakes only: a ticket would also cost the server an encryption per
    // handshake that a resumption-less client never uses.
    server.send_tls13_tickets = 0;
    let mut roots = RootCertStore::empty();
    roots.add(chain.ca.clone()).unwrap();
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.resumption = Resumption::disabled();
    (Arc::new(client), Arc::new(server))
}

/// Hands all of `bytes` to `conn`, processing as it goes: `read_tls` takes at most what
/// rustls' deframer buffer holds, so one call may not drain a large flight.
fn feed<S: SideData>(conn: &mut ConnectionCommon<S>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        conn.read_tls(&mut bytes).unwrap();
        conn.process_new_packets().unwrap();
    }
}

fn drain<S: SideData>(conn: &mut ConnectionCommon<S>, buf: &mut Vec<u8>) {
    buf.clear();
    while conn.wants_write() {
        conn.write_tls(buf).unwrap();
    }
}

/// One full handshake; returns both ends and, if `time_server`, the CPU time spent inside
/// the server's calls (without it, no clock is read, so a whole-handshake time has no
/// clock reads in it).
fn handshake(
    client_config: &Arc<ClientConfig>,
    server_config: &Arc<ServerConfig>,
    buf: &mut Vec<u8>,
    time_server: bool,
) -> (ClientConnection, ServerConnection, Duration) {
    let clock = || {
        if time_server {
            thread_cpu()
        } else {
            Duration::ZERO
        }
    };
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(client_config.clone(), name).unwrap();
    let start = clock();
    let mut server = ServerConnection::new(server_config.clone()).unwrap();
    let mut in_server = clock() - start;
    while client.is_handshaking() || server.is_handshaking() || client.wants_write() {
        drain(&mut client, buf);
        let start = clock();
        feed(&mut server, buf);
        drain(&mut server, buf);
        in_server += clock() - start;
        feed(&mut client, buf);
    }
    (client, server, in_server)
}

struct HandshakeCase {
    name: &'static str,
    version: &'static SupportedProtocolVersion,
    key: KeyType,
    /// What the client offers, when not the provider's default.
    client_kx: Option<&'static dyn SupportedKxGroup>,
    only: Option<&'static str>,
    expect_kx: NamedGroup,
    expect_suite: CipherSuite,
}

fn bench_handshakes(c: &mut Criterion) {
    use rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768;
    use rustls::version::{TLS12, TLS13};
    let cases = [
        HandshakeCase {
            name: "tls13-p256",
            version: &TLS13,
            key: KeyType::P256,
            client_kx: None,
            only: None,
            expect_kx: NamedGroup::X25519,
            expect_suite: CipherSuite::TLS13_AES_256_GCM_SHA384,
        },
        HandshakeCase {
            name: "tls13-rsa2048",
            version: &TLS13,
            key: KeyType::Rsa2048,
            client_kx: None,
            only: None,
            expect_kx: NamedGroup::X25519,
            expect_suite: CipherSuite::TLS13_AES_256_GCM_SHA384,
        },
        HandshakeCase {
            name: "tls12-p256",
            version: &TLS12,
            key: KeyType::P256,
            client_kx: None,
            only: None,
            expect_kx: NamedGroup::X25519,
            expect_suite: CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        },
        // What a current browser asks an aws-lc-rs server for; ring has no ML-KEM, so this
        // is what choosing ring would give up, not a like-for-like row.
        HandshakeCase {
            name: "tls13-p256-x25519mlkem768",
            version: &TLS13,
            key: KeyType::P256,
            client_kx: Some(X25519MLKEM768),
            only: Some("aws-lc-rs"),
            expect_kx: NamedGroup::X25519MLKEM768,
            expect_suite: CipherSuite::TLS13_AES_256_GCM_SHA384,
        },
    ];
    let mut total = Vec::new();
    let mut server_only = Vec::new();
    for case in &cases {
        let chain = case.key.chain();
        for backend in backends() {
            if case.only.is_some_and(|only| only != backend.name) {
                continue;
            }
            let (client, server) = configs((backend.provider)(), case.version, &chain);
            let client = match case.client_kx {
                Some(kx) => {
                    let mut provider = (backend.provider)();
                    provider.kx_groups = vec![kx];
                    let (client, _) = configs(provider, case.version, &chain);
                    client
                }
                None => client,
            };
            let mut buf = Vec::new();
            let (conn, _, _) = handshake(&client, &server, &mut buf, false);
            assert_eq!(conn.protocol_version(), Some(case.version.version));
            assert_eq!(
                conn.negotiated_cipher_suite().map(|s| s.suite()),
                Some(case.expect_suite)
            );
            assert_eq!(
                conn.negotiated_key_exchange_group().map(|g| g.name()),
                Some(case.expect_kx),
                "{} {}",
                case.name,
                backend.name
            );
            let id = BenchmarkId::new(case.name, backend.name);
            total.push((id.clone(), client.clone(), server.clone()));
            server_only.push((id, client, server));
        }
    }
    let mut group = c.benchmark_group("handshake");
    for (id, client, server) in &total {
        let mut buf = Vec::new();
        group.bench_function(id.clone(), |b| {
            b.iter_custom(|iters| {
                cpu_timed(iters, || {
                    black_box(handshake(client, server, &mut buf, false));
                })
            });
        });
    }
    group.finish();
    let mut group = c.benchmark_group("handshake_server");
    for (id, client, server) in &server_only {
        let mut buf = Vec::new();
        group.bench_function(id.clone(), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| black_box(handshake(client, server, &mut buf, true)).2)
                    .sum()
            });
        });
    }
    group.finish();
}

fn bench_signing(c: &mut Criterion) {
    // A TLS 1.3 CertificateVerify input: 64 spaces, the context string, a zero byte and a
    // SHA-256 transcript hash. The length barely matters: it is hashed once.
    let mut message = vec![0x20; 64];
    message.extend_from_slice(b"TLS 1.3, server CertificateVerify\0");
    message.extend_from_slice(&[0xa5; 32]);
    let mut group = c.benchmark_group("sign");
    for (name, key) in [("p256", KeyType::P256), ("rsa2048-pss", KeyType::Rsa2048)] {
        let chain = key.chain();
        for backend in backends() {
            let provider = (backend.provider)();
            let signing_key = provider
                .key_provider
                .load_private_key(PrivateKeyDer::Pkcs8(chain.key.clone_key()))
                .unwrap();
            let signer = signing_key.choose_scheme(&[key.tls13_scheme()]).unwrap();
            group.bench_function(BenchmarkId::new(name, backend.name), |b| {
                b.iter_custom(|iters| {
                    cpu_timed(iters, || {
                        black_box(signer.sign(black_box(&message)).unwrap());
                    })
                });
            });
        }
    }
    group.finish();
}

fn bench_records(c: &mut Criterion) {
    let chain = KeyType::P256.chain();
    let mut group = c.benchmark_group("record");
    // 64 B: a typical small WebSocket message; 16 KiB: the largest plaintext one TLS record
    // carries, so it is one record, the per-byte end of the curve.
    for size in [64usize, 16 * 1024] {
        group.throughput(Throughput::Bytes(size as u64));
        for suite_index in 0..3 {
            for backend in backends() {
                let (suite_name, suite) = backend.tls13_suites[suite_index];
                let mut provider = (backend.provider)();
                provider.cipher_suites = vec![suite];
                let (client_config, server_config) =
                    configs(provider, &rustls::version::TLS13, &chain);
                let mut buf = Vec::new();
                let (mut client, mut server, _) =
                    handshake(&client_config, &server_config, &mut buf, false);
                assert_eq!(client.negotiated_cipher_suite(), Some(suite));
                let message = vec![0x5a; size];
                let mut out = vec![0; size];
                let id = BenchmarkId::new(format!("{suite_name}-{size}B"), backend.name);
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        cpu_timed(iters, || {
                            client.writer().write_all(black_box(&message)).unwrap();
                            drain(&mut client, &mut buf);
                            feed(&mut server, &buf);
                            server.reader().read_exact(&mut out).unwrap();
                            black_box(&out);
                        })
                    });
                });
            }
        }
    }
    group.finish();
}

/// What `handshake_server` adds per server call: two clock reads.
fn bench_clock(c: &mut Criterion) {
    c.bench_function("clock/thread-cpu-pair", |b| {
        b.iter_custom(|iters| {
            cpu_timed(iters, || {
                black_box(thread_cpu());
                black_box(thread_cpu());
            })
        });
    });
}

criterion_group!(
    benches,
    bench_handshakes,
    bench_signing,
    bench_records,
    bench_clock
);
criterion_main!(benches);
