//! The examples as a user runs them. Pointed at a socket that is not there, a client prints
//! one line, `error: ` then what it was doing and why it failed, and exits non-zero: never
//! the `Debug` struct that `main` returning `Result` would print.

mod support;

use std::process::Stdio;

use support::{example_exe, temp_dir, within};

#[tokio::test]
async fn a_client_pointed_at_a_missing_socket_says_so_in_one_line() {
    let dir = temp_dir();
    let missing = dir.path().join("missing.sock");
    let cause = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    for example in ["hello_client", "flood_client"] {
        let exe = tokio::task::spawn_blocking(move || example_exe(example))
            .await
            .unwrap();
        let run = tokio::process::Command::new(exe)
            .arg(&missing)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = within(example, run).await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{example} succeeded: {stderr}");
        assert_eq!(stdout, "", "{example}");
        let lines: Vec<&str> = stderr.lines().collect();
        let [line] = lines[..] else {
            panic!("{example} printed {} lines: {stderr}", lines.len())
        };
        assert!(
            !line.contains('{') && !line.contains("kind:"),
            "{example}: {line}"
        );
        let expected = format!("error: connect to {}: {cause}", missing.display());
        assert_eq!(line, expected, "{example}");
    }
}
