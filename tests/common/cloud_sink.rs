//! The cloud contract sink (tests/python/cloud_sink.py) as a child process: a real TLS server
//! that checks each cloud's requests with the vendors' own Python libraries and answers like the
//! cloud, plus its test-control endpoints (`/_sink/accepted`, `/_sink/stats`, `/_sink/fail`,
//! `/_sink/reset`). Started with the cloud sections a test needs; killed on drop. A missing
//! Python module fails the test with the pip line that installs it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};
use simgate::testkit::TestPki;

/// What installs the sink's Python libraries (scripts/test.sh runs it).
pub const PIP_HINT: &str =
    "pip install botocore azure-iot-device azure-eventhub google-auth cryptography";

const SINK_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/cloud_sink.py");

/// A running contract sink.
pub struct CloudSink {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The CA that signed its certificate (for `ca =` and curl).
    pub ca: PathBuf,
    stderr_path: PathBuf,
    /// A service-account JSON the sink's token endpoint accepts (its `token_uri` is the sink's
    /// `/token`).
    pub service_account: PathBuf,
}

impl Drop for CloudSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Panics with the pip hint when python's stderr says a module is missing.
pub fn explain_python_failure(what: &str, stderr: &str) -> ! {
    if stderr.contains("ModuleNotFoundError") || stderr.contains("No module named") {
        panic!(
            "{what}: a Python module the cloud sink needs is missing; install them with\n    \
             {PIP_HINT}\n(scripts/test.sh does it). python said:\n{stderr}"
        );
    }
    panic!("{what}; its stderr:\n{stderr}");
}

impl CloudSink {
    /// Start the sink in `dir` with a certificate from `pki` and the cloud `sections` (the JSON
    /// object of tests/python/cloud_sink.py's config without `cert`, `key` and `port`). A
    /// `gcp` section gets `service_account_file` set to a fresh service account.
    pub fn start(dir: &Path, pki: &TestPki, sections: Value) -> CloudSink {
        let cert = pki
            .server_cert("cloud-sink", &["localhost", "127.0.0.1"])
            .expect("sink certificate");
        let service_account = dir.join("sa.json");
        // token_uri is rewritten below once the port is known (the sink re-reads the file).
        let out = Command::new("python3")
            .arg(SINK_SCRIPT)
            .arg("--make-service-account")
            .arg(&service_account)
            .args(["--token-uri", "https://127.0.0.1:1/token", "--project", "p"])
            .output()
            .expect("python3 is required for these tests: apt-get install python3");
        if !out.status.success() {
            explain_python_failure(
                "cloud_sink.py --make-service-account failed",
                &String::from_utf8_lossy(&out.stderr),
            );
        }
        let mut config = sections;
        config["cert"] = json!(cert.cert);
        config["key"] = json!(cert.key);
        config["port"] = json!(0);
        if config.get("gcp").is_some() {
            config["gcp"]["service_account_file"] = json!(service_account);
        }
        let config_path = dir.join("sink.json");
        std::fs::write(&config_path, config.to_string()).expect("write sink.json");
        let stderr_path = dir.join("cloud_sink.stderr");
        let mut child = Command::new("python3")
            .arg(SINK_SCRIPT)
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("sink stderr file"))
            .spawn()
            .expect("python3 is required for these tests: apt-get install python3");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("sink stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        let Some(port) = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse::<u16>().ok())
        else {
            let _ = child.wait();
            explain_python_failure(
                &format!("the cloud sink did not start (stdout {line:?})"),
                &std::fs::read_to_string(&stderr_path).unwrap_or_default(),
            );
        };
        let mut sa: Value =
            serde_json::from_slice(&std::fs::read(&service_account).expect("read sa.json"))
                .expect("sa.json");
        sa["token_uri"] = json!(format!("https://127.0.0.1:{port}/token"));
        std::fs::write(&service_account, sa.to_string()).expect("rewrite sa.json");
        CloudSink {
            child,
            port,
            ca: pki.ca_pem.clone(),
            stderr_path,
            service_account,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `https://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// A control request; returns (status, body).
    pub fn control(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        let mut args: Vec<String> = vec![
            "-sS".into(),
            "--cacert".into(),
            self.ca.display().to_string(),
            "-X".into(),
            method.into(),
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        if let Some(b) = body {
            args.extend([
                "-H".into(),
                "content-type: application/json".into(),
                "--data-binary".into(),
                b.to_string(),
            ]);
        }
        args.push(self.url(path));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = super::curl(&refs);
        assert!(ok, "curl to the sink's {path} failed: {out}");
        let (body, code) = out.rsplit_once('\n').expect("status line");
        (code.trim().parse().expect("status"), body.to_owned())
    }

    /// A control request that must answer 200 with JSON.
    pub fn control_json(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, text) = self.control(method, path, body);
        assert_eq!(status, 200, "sink {method} {path}: {text}");
        serde_json::from_str(&text).expect("sink JSON")
    }

    /// `GET path` as JSON.
    pub fn json(&self, path: &str) -> Value {
        self.control_json("GET", path, None)
    }

    /// Messages the sink accepted for `cloud`.
    pub fn accepted(&self, cloud: &str) -> Vec<Value> {
        match self.json(&format!("/_sink/accepted?cloud={cloud}")) {
            Value::Array(items) => items,
            other => panic!("accepted is not a list: {other}"),
        }
    }

    /// `/_sink/stats`.
    pub fn stats(&self) -> Value {
        self.json("/_sink/stats")
    }

    /// Cloud calls the sink received for `cloud` (accepted or not).
    pub fn calls(&self, cloud: &str) -> u64 {
        self.stats()["calls"][cloud].as_u64().unwrap_or(0)
    }

    /// Access tokens its token endpoint issued.
    pub fn tokens_issued(&self) -> u64 {
        self.stats()["tokens_issued"]
            .as_u64()
            .expect("tokens_issued")
    }

    /// The next `count` calls to `cloud` (`"token"`: the token endpoint) answer `status`
    /// (with `Retry-After` if given).
    pub fn fail(&self, cloud: &str, status: u16, count: u32, retry_after: Option<u32>) {
        let spec = json!({"cloud": cloud, "status": status, "count": count,
                          "retry_after": retry_after});
        self.control_json("POST", "/_sink/fail", Some(&spec));
    }

    /// Clears what it recorded, its issued tokens and pending failures.
    pub fn reset(&self) {
        self.control_json("POST", "/_sink/reset", None);
    }

    /// What it wrote to stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGSTOP the sink: it stops accepting, reading and answering, with its sockets open.
    pub fn freeze(&self) {
        super::signal(self.child.id(), "STOP");
    }

    /// SIGCONT a sink stopped with [`CloudSink::freeze`].
    pub fn thaw(&self) {
        super::signal(self.child.id(), "CONT");
    }
}
