//! Integration: a real nginx (from Debian) as the HTTPS upstream, with a certificate minted at
//! test time. Proves interoperability with a production TLS/HTTP stack beyond our own sink.

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use common::*;

struct Nginx {
    child: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> String {
    for p in ["/usr/sbin/nginx", "/usr/local/sbin/nginx"] {
        if std::path::Path::new(p).exists() {
            return p.to_string();
        }
    }
    panic!(
        "nginx is required for this test: apt-get install nginx-light (scripts/test.sh does it)"
    );
}

#[test]
fn forwards_to_real_nginx_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = simgate::testkit::TestPki::new(dir.path()).expect("pki");
    let cert = pki.server_cert("nginx", &["localhost"]).expect("cert");
    // Pick a free port for nginx.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let conf = format!(
        r#"
daemon off;
master_process off;
user root;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        keepalive_requests 10000;
        location / {{
            add_header X-Upstream nginx;
            return 200 "method=$request_method uri=$request_uri host=$http_host xff=$http_x_forwarded_for len=$content_length\n";
        }}
    }}
}}
"#,
        dir = dir.path().display(),
        cert = cert.cert.display(),
        key = cert.key.display(),
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let child = Command::new(nginx_binary())
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.path().join("nginx-error.log"))
        .spawn()
        .expect("start nginx");
    let _nginx = Nginx { child };
    // nginx has no readiness signal; wait until its port accepts (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(dir.path().join("nginx-error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let toml = format!(
        r#"
[gateway]
shards = 1
admin = "off"
[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"
[[destination]]
name = "nginx"
adapter = "https"
endpoint = "127.0.0.1:{port}"
server_name = "localhost"
ca = "{ca}"
host_header = "ingest.example"
[[group]]
name = "default"
routes = [ {{ listener = "http", path = "/", destination = "nginx" }} ]
"#,
        ca = pki.ca_pem.display()
    );
    let gw = Simgate::start(dir.path(), &toml);
    let mut d = Device::connect(gw.http);
    for i in 0..20 {
        let resp = d.request(&post(&format!("/t/{i}"), b"0123456789", ""));
        assert_eq!(resp.status, 200, "{}", resp.body_text());
        assert_eq!(resp.header("x-upstream"), Some("nginx"));
        assert_eq!(
            resp.body_text(),
            format!("method=POST uri=/t/{i} host=ingest.example xff=127.0.0.1 len=10\n")
        );
    }
}
