//! What a new user reads when the configuration is not right yet (docs/configuration.md,
//! "Problems, all at once"): problems in the order of the file's lines; the default key
//! source named as such; a missing `config.toml` with its directory and `--config`; and
//! upstream-demo creating the directory of its session database, or naming the file.

use std::path::Path;
use std::process::{Command, Output};

use tests::SECRET;
use tests::procs::{Proc, bin};

fn run(program: &str, dir: &Path, args: &[&str], secret: bool) -> Output {
    let mut cmd = Command::new(bin(program));
    cmd.current_dir(dir).args(args).env_remove("JWT_SECRET");
    if secret {
        cmd.env("JWT_SECRET", SECRET);
    }
    cmd.output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn check(text: &str, secret: bool) -> String {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("gateway.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    let out = run(
        "proxy",
        dir.path(),
        &["--check", "--config", "gateway.toml"],
        secret,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The line numbers of the problems, in the order printed.
fn lines(err: &str) -> Vec<usize> {
    err.lines()
        .filter_map(|l| l.split_once("(line ")?.1.split_once(')')?.0.parse().ok())
        .collect()
}

#[test]
fn problems_are_listed_in_line_order() {
    // Sections out of their usual order, a mistyped value among them: validation finds
    // them section by section, the reader gets them line by line.
    let err = check(
        "[auth]\nalgorithms = [\"none\"]\nleeway = \"forever\"\n[upstream]\nservers = [\"nowhere\"]\nconnect_timeout = \"0s\"\n[proxy]\nlisten = \"nowhere\"\nthreads = 0\n",
        true,
    );
    assert!(err.starts_with("gateway.toml: 6 problems\n"), "{err}");
    assert_eq!(lines(&err), [2, 3, 5, 6, 8, 9], "{err}");
    for key in [
        "auth.algorithms (line 2)",
        "auth.leeway (line 3)",
        "upstream.servers[0] (line 5)",
        "upstream.connect_timeout (line 6)",
        "proxy.listen (line 8)",
        "proxy.threads (line 9)",
    ] {
        assert!(err.contains(key), "{key} missing:\n{err}");
    }
}

#[test]
fn the_default_secret_env_is_named_as_the_default_on_the_auth_line() {
    let base = "[proxy]\nlisten = \"127.0.0.1:1\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n\n[auth]\nissuer = \"app\"\n";
    let err = check(base, false);
    assert!(
        err.contains(
            "auth.secret_env (line 6): environment variable JWT_SECRET is not set: [auth] names no key source, so the default secret_env = \"JWT_SECRET\" applies; set that variable, or name one key source: secret_env, secret_file, public_key_file, jwks_file, jwks_url or oidc_issuer"
        ),
        "{err}"
    );
    // Written, it is the user's own choice: no word about defaults.
    let err = check(&format!("{base}secret_env = \"JWT_SECRET\"\n"), false);
    assert!(
        err.contains("auth.secret_env (line 8): environment variable JWT_SECRET is not set\n")
            && !err.contains("default"),
        "{err}"
    );
}

#[test]
fn a_missing_config_file_names_its_directory_and_the_flag() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let here = dir.path().canonicalize().unwrap_or_else(|e| panic!("{e}"));
    let out = run("proxy", dir.path(), &[], true);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "there is no config.toml in {}; run proxy where it is, or name the file with --config FILE",
            here.display()
        )),
        "{err}"
    );
    let out = run("proxy", dir.path(), &["--config", "etc/gateway.toml"], true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "there is no gateway.toml in {}",
            here.join("etc").display()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn upstream_demo_creates_the_directory_of_its_session_database() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("demo.toml");
    std::fs::write(
        &file,
        "[demo]\nlisten = \"127.0.0.1:0\"\nsession_db = \"not/yet/there/sessions.sqlite3\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(bin("upstream-demo"));
    cmd.arg("--config").arg(&file).env("JWT_SECRET", SECRET);
    let demo = Proc::spawn("upstream-demo", cmd);
    demo.wait_for_line("listening on").await;
    assert!(dir.path().join("not/yet/there/sessions.sqlite3").exists());
    drop(demo);

    // A directory that cannot be made: the error names the file and why.
    std::fs::write(dir.path().join("blocker"), "a file, not a directory")
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        &file,
        "[demo]\nlisten = \"127.0.0.1:0\"\nsession_db = \"blocker/sessions.sqlite3\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = file.to_string_lossy().into_owned();
    let out = run("upstream-demo", dir.path(), &["--config", &config], true);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let db = dir.path().join("blocker/sessions.sqlite3");
    assert!(
        err.contains(&format!(
            "demo.session_db ({}): cannot create ",
            db.display()
        )),
        "{err}"
    );
}
