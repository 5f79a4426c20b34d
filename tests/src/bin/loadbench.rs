//! Load benchmark: the gateway against HAProxy 2.6 with `jwt_verify` and nginx proxying
//! without authentication, all on 127.0.0.1, driven by `oha`, printed as one table.
//!
//! Pinning: the system under test (gateway with `threads = 1`, HAProxy `nbthread 1`,
//! nginx with 1 worker) runs alone on CPU 0; `oha` and the upstream share CPU 1. Runs
//! are interleaved (A B C A B C ...), `BENCH_ROUNDS` of each (default 3), and ratios are
//! computed round by round, then their median reported.
//!
//! `GATEWAY_VARIANTS="label=/path/to/proxy,..."` adds other builds of the gateway (e.g.
//! another global allocator, or the previous commit) to the "valid HS256 c=50", the
//! three rejection and the upstream-demo handshake scenarios.
//!
//! Run it with `bench/run` (builds first, checks the tools).

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tests::SECRET;
use tests::bench::{
    LOAD_CPU, SUT_CPU, System, gateway, gateway_build, gateway_variants, haproxy, median, nginx,
    trivial_upstream, upstream_demo,
};
use tests::procs::fixture;
use tests::tokens::{claims, hs256, private_key, sign};

/// One `oha` run: (requests/s, p99 ms, status code counts).
fn oha(url: &str, conns: u32, duration: &str) -> (f64, f64, Value) {
    tests::bench::oha(&["-z", duration, "-c", &conns.to_string()], url)
}

struct Scenario<'a> {
    name: String,
    query: String,
    expect: u16,
    conns: u32,
    systems: Vec<&'a System>,
}

fn require(tool: &str, how: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("loadbench: {tool} is missing: {how}");
        std::process::exit(1);
    }
}

#[tokio::main]
async fn main() {
    require("oha", "cargo install oha --locked");
    require("haproxy", "apt-get install -y haproxy");
    require("nginx", "apt-get install -y nginx");
    require("taskset", "apt-get install -y util-linux");
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let duration = std::env::var("BENCH_DURATION").unwrap_or_else(|_| "4s".into());
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();

    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path();

    // Upstreams on the load CPU: a trivial 200, and upstream-demo (a real Engine.IO handshake).
    let (trivial, _t) = trivial_upstream(dir).await;
    let (demo_addr, demo_proc) = upstream_demo(dir).await;

    // HAProxy 2.6 verifies RS256/ES256 with a PEM public key path, the same files.
    let (rsa_pub, ec_pub) = (
        fixture("rsa.pub.pem").display().to_string(),
        fixture("ec256.pub.pem").display().to_string(),
    );

    let hs_auth = "algorithms = [\"HS256\"]\nsecret_env = \"JWT_SECRET\"\nissuer = \"upstream-demo\"\naudience = \"socket.io\"\n";
    let gw = gateway(dir, "gateway", trivial, hs_auth).await;
    let ha = haproxy(dir, "haproxy+jwt", trivial, "HS256", SECRET).await;
    let ngx_body = "  upstream u { server UP; keepalive 64; }\n  server { listen LISTEN; location / { proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }";
    let (ngx_addr, ngx_proc) = nginx(
        dir,
        "nginx-noauth",
        &ngx_body.replace("UP", &trivial.to_string()),
        SUT_CPU,
    )
    .await;
    let ngx = System {
        name: "nginx (no auth)".into(),
        addr: ngx_addr,
        proc_: ngx_proc,
    };

    let gw_demo = gateway(dir, "gateway", demo_addr, hs_auth).await;
    let ha_demo = haproxy(dir, "haproxy+jwt", demo_addr, "HS256", SECRET).await;
    let (nd_addr, nd_proc) = nginx(
        dir,
        "nginx-demo",
        &ngx_body.replace("UP", &demo_addr.to_string()),
        SUT_CPU,
    )
    .await;
    let ngx_demo = System {
        name: "nginx (no auth)".into(),
        addr: nd_addr,
        proc_: nd_proc,
    };

    let rs_auth = format!(
        "algorithms = [\"RS256\"]\npublic_key_file = \"{}\"\nissuer = \"upstream-demo\"\naudience = \"socket.io\"\n",
        fixture("rsa.pub.pem").display()
    );
    let es_auth = format!(
        "algorithms = [\"ES256\"]\npublic_key_file = \"{}\"\nissuer = \"upstream-demo\"\naudience = \"socket.io\"\n",
        fixture("ec256.pub.pem").display()
    );
    let gw_rs = gateway(dir, "gateway RS256", trivial, &rs_auth).await;
    let ha_rs = haproxy(dir, "haproxy+jwt RS256", trivial, "RS256", &rsa_pub).await;
    let gw_es = gateway(dir, "gateway ES256", trivial, &es_auth).await;
    let gw_rs_nc = gateway(
        dir,
        "gateway RS256, verify_cache = 0",
        trivial,
        &format!("{rs_auth}verify_cache = 0\n"),
    )
    .await;
    let gw_es_nc = gateway(
        dir,
        "gateway ES256, verify_cache = 0",
        trivial,
        &format!("{es_auth}verify_cache = 0\n"),
    )
    .await;
    let gw_nc = gateway(
        dir,
        "gateway, verify_cache = 0",
        trivial,
        &format!("{hs_auth}verify_cache = 0\n"),
    )
    .await;
    let ha_es = haproxy(dir, "haproxy+jwt ES256", trivial, "ES256", &ec_pub).await;

    // Other builds of the gateway (GATEWAY_VARIANTS), beside it in three scenarios.
    let mut variants = Vec::new();
    for (label, program) in gateway_variants() {
        let name = format!("gateway ({label})");
        variants.push((
            gateway_build(dir, &name, trivial, hs_auth, &program).await,
            gateway_build(dir, &name, demo_addr, hs_auth, &program).await,
        ));
    }

    let mut long = claims("gonzalo");
    long["exp"] = json!(tests::tokens::now() + 24 * 3600);
    let valid = hs256(&long);
    let mut exp = long.clone();
    exp["exp"] = json!(1_000_000);
    let expired = hs256(&exp);
    // A character inside the signature changed (the last one may only carry padding
    // bits, which lenient base64 decoders such as HAProxy's ignore).
    let at = valid.len() - 10;
    let flipped = if &valid[at..=at] == "A" { "B" } else { "A" };
    let bad_sig = format!("{}{flipped}{}", &valid[..at], &valid[at + 1..]);
    let rs = sign(Algorithm::RS256, &private_key("rsa"), None, &long);
    let es = sign(Algorithm::ES256, &private_key("ec256"), None, &long);
    let q = |t: &str| format!("/socket.io/?EIO=4&transport=polling&token={t}");

    let mut scenarios = Vec::new();
    for c in [10, 50, 200] {
        scenarios.push(Scenario {
            name: format!("valid HS256 -> 200, c={c}"),
            query: q(&valid),
            expect: 200,
            conns: c,
            systems: if c == 50 {
                let mut v = vec![&gw, &ha, &ngx, &gw_nc];
                v.extend(variants.iter().map(|(t, _)| t));
                v
            } else {
                vec![&gw, &ha, &ngx]
            },
        });
    }
    for (what, query) in [
        ("bad signature", q(&bad_sig)),
        ("expired", q(&expired)),
        (
            "no token",
            "/socket.io/?EIO=4&transport=polling".to_string(),
        ),
    ] {
        scenarios.push(Scenario {
            name: format!("reject {what}, c=50"),
            query,
            expect: 401,
            conns: 50,
            systems: {
                let mut v = vec![&gw, &ha];
                v.extend(variants.iter().map(|(t, _)| t));
                v
            },
        });
    }
    for (name, token, systems) in [
        ("valid HS256 -> upstream-demo handshake", &valid, {
            let mut v = vec![&gw_demo, &ha_demo, &ngx_demo];
            v.extend(variants.iter().map(|(_, d)| d));
            v
        }),
        ("valid RS256 -> 200", &rs, vec![&gw_rs, &ha_rs, &gw_rs_nc]),
        ("valid ES256 -> 200", &es, vec![&gw_es, &ha_es, &gw_es_nc]),
    ] {
        scenarios.push(Scenario {
            name: format!("{name}, c=50"),
            query: q(token),
            expect: 200,
            conns: 50,
            systems,
        });
    }
    scenarios.retain(|s| only.is_empty() || s.name.contains(&only));

    let mut table = String::new();
    let _ = writeln!(
        table,
        "| scenario | system | req/s median (min..max) | p99 ms median | x HAProxy (median of rounds) | x nginx |\n|---|---|---|---|---|---|"
    );
    for s in &scenarios {
        // Warm-up, and a check that every system answers as expected.
        for sys in &s.systems {
            let (_, _, codes) = oha(&format!("http://{}{}", sys.addr, s.query), s.conns, "1s");
            let want = s.expect.to_string();
            let total: u64 = codes
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
            let good = codes[&want].as_u64().unwrap_or(0);
            assert!(
                total > 0 && good == total,
                "{} on {}: expected only {want}, got {codes}",
                sys.name,
                s.name
            );
        }
        let mut rps = vec![Vec::new(); s.systems.len()];
        let mut p99 = vec![Vec::new(); s.systems.len()];
        for _ in 0..rounds {
            for (i, sys) in s.systems.iter().enumerate() {
                let (r, p, _) = oha(
                    &format!("http://{}{}", sys.addr, s.query),
                    s.conns,
                    &duration,
                );
                rps[i].push(r);
                p99[i].push(p);
            }
        }
        let ratio_to = |i: usize, j: usize| {
            median(
                (0..rounds)
                    .map(|k| rps[i][k] / rps[j][k].max(1e-9))
                    .collect(),
            )
        };
        let ha_i = s.systems.iter().position(|x| x.name.starts_with("haproxy"));
        let ngx_i = s.systems.iter().position(|x| x.name.starts_with("nginx"));
        let vs = |i: usize, j: Option<usize>| match j {
            Some(j) if j != i => format!("{:.2}", ratio_to(i, j)),
            _ => "-".to_string(),
        };
        for (i, sys) in s.systems.iter().enumerate() {
            let min = rps[i].iter().copied().fold(f64::INFINITY, f64::min);
            let max = rps[i].iter().copied().fold(0.0, f64::max);
            let (vs_ha, vs_ngx) = (vs(i, ha_i), vs(i, ngx_i));
            let _ = writeln!(
                table,
                "| {} | {} | {:.0} ({:.0}..{:.0}) | {:.2} | {} | {} |",
                s.name,
                sys.name,
                median(rps[i].clone()),
                min,
                max,
                median(p99[i].clone()),
                vs_ha,
                vs_ngx
            );
        }
        eprintln!("done: {}", s.name);
    }
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "machine: {} CPUs, {cpus}; SUT pinned to CPU {SUT_CPU}, oha + upstream on CPU {LOAD_CPU}; {rounds} rounds of {duration} each, interleaved\n",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    print!("{table}");
    drop(demo_proc);
    std::thread::sleep(Duration::from_millis(100));
}
