//! Writes a test PKI for the client suites (docs/tls.md), and prints what it wrote as
//! JSON: `testcerts <DIR>`.
//!
//! - `ca.pem`: the gateway's test CA; `server.pem`/`server.key` (serial 1) and
//!   `renewed.pem`/`renewed.key` (serial 2): leaves for `127.0.0.1` and `localhost`.
//! - `upstream-ca.pem` with `upstream.pem`/`upstream.key`: another CA and its leaf, for
//!   a socket.io server the gateway reaches over TLS.

use std::path::PathBuf;
use std::time::Duration;

use tests::tls::TestCa;

const VALID_FOR: Duration = Duration::from_secs(90 * 24 * 3600);

fn main() -> Result<(), String> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("usage: testcerts <DIR>")?);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ca = TestCa::new("socketio-jwt-gateway test CA")?;
    let server = ca.leaf(1, VALID_FOR)?;
    let renewed = ca.leaf(2, VALID_FOR)?;
    let upstream_ca = TestCa::new("test upstream CA")?;
    let upstream = upstream_ca.leaf(3, VALID_FOR)?;
    let ca_file = ca.write(&dir, "ca.pem");
    let server_files = server.write(&dir, "server");
    let renewed_files = renewed.write(&dir, "renewed");
    let upstream_ca_file = upstream_ca.write(&dir, "upstream-ca.pem");
    let upstream_files = upstream.write(&dir, "upstream");
    let out = serde_json::json!({
        "ca": ca_file,
        "server": { "cert": server_files.cert, "key": server_files.key, "serial": server.serial, "spki": server.spki_sha256 },
        "renewed": { "cert": renewed_files.cert, "key": renewed_files.key, "serial": renewed.serial, "spki": renewed.spki_sha256 },
        "upstreamCa": upstream_ca_file,
        "upstream": { "cert": upstream_files.cert, "key": upstream_files.key, "serial": upstream.serial },
    });
    println!("{out}");
    Ok(())
}
