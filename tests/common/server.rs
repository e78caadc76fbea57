//! A running `impasto serve` on a loopback port, and its HTTP replies.
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_impasto"))
            .env("IMPASTO_DEVICE", "cpu")
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .env_remove("IMPASTO_THREADS")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start impasto serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, url }
    }
    pub fn get(&self, path: &str) -> Reply {
        reply(ureq::get(&format!("{}{path}", self.url)).call())
    }
    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Reply {
        reply(
            ureq::post(&format!("{}{path}", self.url))
                .set("content-type", content_type)
                .send_bytes(body),
        )
    }
    pub fn health(&self) -> serde_json::Value {
        self.get("/healthz").json()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            )
        })
    }
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }
    /// A JSON error with this status and category.
    pub fn assert_error(&self, status: u16, category: &str) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert!(self.content_type.starts_with("application/json"));
        let j = self.json();
        assert_eq!(j["error"]["status"], status);
        assert_eq!(j["error"]["category"], category, "{j}");
        assert!(!j["error"]["message"].as_str().unwrap().is_empty());
    }
}

pub fn reply(r: Result<ureq::Response, ureq::Error>) -> Reply {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = resp.status();
    let content_type = resp.header("content-type").unwrap_or("").to_string();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = resp.header(&n).unwrap_or("").to_string();
            (n, v)
        })
        .collect();
    let mut body = Vec::new();
    resp.into_reader()
        .take(256 << 20)
        .read_to_end(&mut body)
        .unwrap();
    Reply {
        status,
        content_type,
        headers,
        body,
    }
}

/// A picture encoded in format `f`.
pub fn encoded(img: &image::DynamicImage, f: image::ImageFormat) -> Vec<u8> {
    let mut v = std::io::Cursor::new(Vec::new());
    img.write_to(&mut v, f).unwrap();
    v.into_inner()
}

pub const MULTIPART_BOUNDARY: &str = "impastoTestBoundary";

/// A multipart/form-data body: `(name, file name, data)` per field.
pub fn multipart(fields: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, file, data) in fields {
        b.extend_from_slice(format!("--{MULTIPART_BOUNDARY}\r\n").as_bytes());
        match file {
            Some(f) => b.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => b.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{MULTIPART_BOUNDARY}--\r\n").as_bytes());
    b
}
