//! The bench scripts' wrk parsers, checked against captured wrk outputs: the
//! README's benchmark and soak figures rest on them (a parser that adds words
//! instead of numbers once reported 0 socket errors whatever happened).

use std::process::Command;

#[test]
fn wrk_parsers_count_socket_errors_and_non_2xx_answers() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/test-parsers.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("bash runs bench/test-parsers.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench/test-parsers.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("all parser checks passed"),
        "bench/test-parsers.sh did not finish its checks:\n{stdout}\n{stderr}"
    );
}
