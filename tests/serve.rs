//! `impasto serve` end to end: the real binary on a loopback port, driven over HTTP, over a
//! WebSocket, under load, and from headless Chromium.
use image::ImageFormat;
use impasto::model::{Arch, Transformer, TransformerConfig};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::server::{encoded, multipart, reply, Server, MULTIPART_BOUNDARY};

use impasto::testutil::photo;

fn models_dir(dir: &Path) {
    Transformer::init(TransformerConfig::new(Arch::Johnson), 3)
        .save(&dir.join("mine.safetensors"), true)
        .unwrap();
    std::fs::write(dir.join("broken.safetensors"), b"not a model").unwrap();
    std::fs::write(dir.join("secret.txt"), b"not for clients").unwrap();
}

#[test]
fn api_lists_styles_stylizes_and_answers_errors_in_json() {
    let dir = tempfile::tempdir().unwrap();
    models_dir(dir.path());
    let models = dir.path().to_str().unwrap();
    let s = Server::start(&[
        "--models",
        models,
        "--max-pixels",
        "100000",
        "--max-bytes",
        "400000",
    ]);

    // Health and the style list: the built-ins plus the good file from --models.
    let h = s.health();
    assert_eq!(h["status"], "ok");
    let styles = s.get("/v1/styles").json();
    let names: Vec<&str> = styles["styles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for n in impasto::styles::names() {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    assert!(names.contains(&"mine") && !names.contains(&"broken"));
    assert_eq!(h["styles"], names.len());
    let first = &styles["styles"][0];
    assert_eq!(first["architecture"], "johnson");
    // Each style says the mirror margin it runs with (its file's, else the default).
    for st in styles["styles"].as_array().unwrap() {
        let n = st["name"].as_str().unwrap();
        if let Some(m) = impasto::styles::builtin(n) {
            let want = m
                .unwrap()
                .margin()
                .unwrap_or(impasto::stylize::DEFAULT_MARGIN);
            assert_eq!(st["margin"], want, "{n}");
        }
    }
    let thumb = s.get(first["thumbnail"].as_str().unwrap());
    assert_eq!(thumb.status, 200);
    assert_eq!(thumb.content_type, "image/jpeg");
    assert_eq!(image::guess_format(&thumb.body).unwrap(), ImageFormat::Jpeg);

    // The page is served, self-contained.
    let page = s.get("/");
    assert_eq!(page.status, 200);
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("/v1/stylize") && html.contains("/v1/live"));
    assert!(
        !html.contains("https://") && !html.contains("http://"),
        "no external resources"
    );

    // Raw body, PNG in → PNG out at the same size.
    let img = photo(96, 64);
    let png = encoded(&img, ImageFormat::Png);
    let r = s.post("/v1/stylize?style=mine", "image/png", &png);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.content_type, "image/png");
    assert_eq!(r.header("x-impasto-size"), Some("96x64"));
    let out = image::load_from_memory(&r.body).unwrap();
    assert_eq!((out.width(), out.height()), (96, 64));
    assert_ne!(out.to_rgb8(), img.to_rgb8(), "stylized");

    // Strength 0 gives the photo back; max_size scales down; format picks the encoding.
    let r = s.post("/v1/stylize?style=mine&strength=0", "image/png", &png);
    assert_eq!(r.status, 200);
    let same = image::load_from_memory(&r.body).unwrap().to_rgb8();
    let diff = same
        .as_raw()
        .iter()
        .zip(img.to_rgb8().as_raw())
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max()
        .unwrap();
    assert!(diff <= 1, "strength 0 differs by {diff}");
    let r = s.post(
        "/v1/stylize?style=mine&max_size=48&format=webp&preserve_color=true",
        "image/png",
        &png,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "image/webp");
    let out = image::load_from_memory(&r.body).unwrap();
    assert_eq!((out.width(), out.height()), (48, 32));

    // Multipart: the file field plus form fields for the parameters; JPEG in → JPEG out.
    let jpg = encoded(&img, ImageFormat::Jpeg);
    let body = multipart(&[
        ("style", None, b"mine"),
        ("strength", None, b"0.5"),
        ("image", Some("photo.jpg"), &jpg),
    ]);
    let r = s.post(
        "/v1/stylize",
        &format!("multipart/form-data; boundary={MULTIPART_BOUNDARY}"),
        &body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.content_type, "image/jpeg");

    // 400: unreadable, truncated, empty, bad parameters, multipart without a file.
    s.post(
        "/v1/stylize?style=mine",
        "image/png",
        b"definitely not an image",
    )
    .assert_error(400, "image");
    s.post("/v1/stylize?style=mine", "image/png", &png[..png.len() / 2])
        .assert_error(400, "image");
    s.post("/v1/stylize?style=mine", "image/png", b"")
        .assert_error(400, "bad-request");
    for q in [
        "style=mine&strength=2",
        "style=mine&strength=abc",
        "style=mine&max_size=0",
        "style=mine&format=gif",
        "style=mine&preserve_color=maybe",
        "style=mine&strenght=0.5",
        "style=mine&margin=257",
        "style=mine&margin=-1",
        "",
    ] {
        s.post(&format!("/v1/stylize?{q}"), "image/png", &png)
            .assert_error(400, "bad-request");
    }
    // A bad margin is named, and a long one echoed only in part.
    let long = "9".repeat(5000);
    let r = s.post(
        &format!("/v1/stylize?style=mine&margin={long}"),
        "image/png",
        &png,
    );
    r.assert_error(400, "bad-request");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.starts_with("margin=") && msg.len() < 300, "{msg}");
    let body = multipart(&[("style", None, b"mine")]);
    s.post(
        "/v1/stylize",
        &format!("multipart/form-data; boundary={MULTIPART_BOUNDARY}"),
        &body,
    )
    .assert_error(400, "bad-request");

    // 404: unknown styles, and names that try to reach files.
    for name in [
        "nope",
        "broken",
        "mine.safetensors",
        "..%2Fmine",
        "..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "secret.txt",
    ] {
        s.post(&format!("/v1/stylize?style={name}"), "image/png", &png)
            .assert_error(404, "unknown-style");
    }
    s.get("/v1/styles/..%2Fsecret.txt/thumbnail")
        .assert_error(404, "unknown-style");
    s.get("/v1/nothing").assert_error(404, "not-found");

    // 413: too many pixels (400×400 > 100000), too many bytes (declared or streamed).
    let big = encoded(&photo(400, 400), ImageFormat::Png);
    s.post("/v1/stylize?style=mine", "image/png", &big)
        .assert_error(413, "image-too-large");
    let noise: Vec<u8> = (0..500_000u32).map(|i| (i * 2654435761) as u8).collect();
    s.post("/v1/stylize?style=mine", "image/png", &noise)
        .assert_error(413, "too-large");
    let r = reply(
        ureq::post(&format!("{}/v1/stylize?style=mine", s.url))
            .set("content-type", "image/png")
            .send(std::io::Cursor::new(noise.clone())),
    );
    r.assert_error(413, "too-large");

    // Still healthy, nothing left running.
    let h = s.health();
    assert_eq!(h["in_flight"], 0);
}

#[test]
fn full_queue_and_timeouts_answer_503() {
    // One worker, no queue: a second request while the first runs is turned away.
    let s = Server::start(&["--workers", "1", "--queue", "0"]);
    let style = impasto::styles::names()[0];
    let big = encoded(&photo(1536, 1536), ImageFormat::Jpeg);
    let url = s.url.clone();
    let path = format!("/v1/stylize?style={style}");
    let slow = std::thread::spawn(move || {
        reply(
            ureq::post(&format!("{url}{path}"))
                .set("content-type", "image/jpeg")
                .send_bytes(&big),
        )
    });
    let t0 = Instant::now();
    while s.health()["in_flight"] != 1 {
        assert!(t0.elapsed() < Duration::from_secs(20), "never started");
        std::thread::sleep(Duration::from_millis(2));
    }
    let small = encoded(&photo(32, 32), ImageFormat::Png);
    let r = s.post(&format!("/v1/stylize?style={style}"), "image/png", &small);
    r.assert_error(503, "busy");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(slow.join().unwrap().status, 200, "the first one finishes");
    let r = s.post(&format!("/v1/stylize?style={style}"), "image/png", &small);
    assert_eq!(r.status, 200, "free again");

    // A request that cannot finish within --timeout gets 503, and the server carries on.
    let s = Server::start(&["--timeout", "0.05"]);
    let big = encoded(&photo(1024, 1024), ImageFormat::Png);
    s.post(&format!("/v1/stylize?style={style}"), "image/png", &big)
        .assert_error(503, "timeout");
    let t0 = Instant::now();
    while s.health()["in_flight"] != 0 {
        assert!(t0.elapsed() < Duration::from_secs(60), "worker never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_missing_models_folder_is_a_clear_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_impasto"))
        .env("IMPASTO_DEVICE", "cpu")
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--models",
            "/definitely/not/here",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/definitely/not/here"), "{err}");
}

#[test]
fn live_websocket_stylizes_frames_and_reports_errors() {
    let s = Server::start(&[]);
    let style = impasto::styles::names()[0];
    let ws_url = s.url.replace("http://", "ws://") + "/v1/live";
    let (mut ws, _) = tungstenite::connect(ws_url.as_str()).expect("websocket");
    use tungstenite::Message;
    let frame = encoded(&photo(160, 120), ImageFormat::Jpeg);
    let next_text = |ws: &mut tungstenite::WebSocket<_>| -> serde_json::Value {
        loop {
            match ws.read().unwrap() {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Binary(_) => panic!("binary before its record"),
                _ => {}
            }
        }
    };
    // A frame before any settings, then bad settings: errors, connection stays up.
    ws.send(Message::Binary(frame.clone().into())).unwrap();
    assert_eq!(next_text(&mut ws)["error"]["status"], 400);
    ws.send(Message::Text(r#"{"style":"nope"}"#.into()))
        .unwrap();
    assert_eq!(next_text(&mut ws)["error"]["status"], 404);
    ws.send(Message::Text("{not json".into())).unwrap();
    assert_eq!(next_text(&mut ws)["error"]["status"], 400);

    // Settings, then a burst of frames: each answer is a record and a JPEG of the frame's
    // size; frames that arrive while one is being stylized are dropped, never queued.
    ws.send(Message::Text(
        format!(r#"{{"style":"{style}","strength":0.8}}"#).into(),
    ))
    .unwrap();
    let burst = 8;
    for _ in 0..burst {
        ws.send(Message::Binary(frame.clone().into())).unwrap();
    }
    let mut got = 0;
    let mut skipped = 0;
    let mut last = 0;
    loop {
        let rec = next_text(&mut ws);
        assert!(rec["error"].is_null(), "{rec}");
        if rec.get("skipped").is_some() {
            // A frame replaced by a newer one before a worker took it: answered, not lost.
            skipped += 1;
            continue;
        }
        assert_eq!(
            (rec["width"].as_u64(), rec["height"].as_u64()),
            (Some(160), Some(120))
        );
        let n = rec["frame"].as_u64().unwrap();
        assert!(n > last, "frames in order");
        last = n;
        match ws.read().unwrap() {
            Message::Binary(b) => {
                let img = image::load_from_memory_with_format(&b, ImageFormat::Jpeg).unwrap();
                assert_eq!((img.width(), img.height()), (160, 120));
            }
            m => panic!("expected the JPEG, got {m:?}"),
        }
        got += 1;
        let dropped = rec["dropped"].as_u64().unwrap();
        // Frame numbers count every binary message, the first (refused) one included.
        if n == burst + 1 {
            assert_eq!(got + dropped, burst, "every frame stylized or dropped");
            assert_eq!(skipped, dropped, "every dropped frame answered");
            break;
        }
    }
    assert!(got >= 1);
    ws.close(None).ok();
}

#[test]
fn load_test_on_loopback() {
    // 200 requests, 16 at a time, against the default pool (a worker per core, queue 32):
    // every request must succeed; only explicit 503s would be acceptable failures.
    let s = Server::start(&[]);
    let style = impasto::styles::names()[0];
    let body = encoded(&photo(256, 192), ImageFormat::Jpeg);
    let (total, conc) = (200usize, 16usize);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t0 = Instant::now();
    let results: Vec<(u16, f64)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..conc)
            .map(|_| {
                sc.spawn(|| {
                    let agent = ureq::AgentBuilder::new().build();
                    let mut v = Vec::new();
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                        let t = Instant::now();
                        let r = reply(
                            agent
                                .post(&format!("{}/v1/stylize?style={style}", s.url))
                                .set("content-type", "image/jpeg")
                                .send_bytes(&body),
                        );
                        if r.status == 200 {
                            assert!(image::load_from_memory(&r.body).is_ok());
                        }
                        v.push((r.status, t.elapsed().as_secs_f64() * 1e3));
                    }
                    v
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(results.len(), total);
    let bad: Vec<_> = results
        .iter()
        .filter(|(st, _)| *st != 200 && *st != 503)
        .collect();
    assert!(bad.is_empty(), "failed requests: {bad:?}");
    let busy = results.iter().filter(|(st, _)| *st == 503).count();
    let mut ms: Vec<f64> = results.iter().map(|r| r.1).collect();
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    println!(
        "LOAD TEST {total} requests (256x192 JPEG, {style}), {conc} concurrent, {} workers: \
         p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms, {:.1} req/s, {busy} x 503",
        s.health()["workers"],
        pct(0.50),
        pct(0.90),
        pct(0.99),
        ms[ms.len() - 1],
        total as f64 / wall
    );
    assert_eq!(busy, 0, "16 concurrent fit in workers + queue 32");
}

/// A minimal W3C WebDriver client over HTTP (chromedriver).
struct Driver {
    base: String,
    session: String,
    child: Child,
}

impl Driver {
    fn cmd(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let r = match method {
            "GET" => reply(ureq::get(&url).call()),
            "DELETE" => reply(ureq::delete(&url).call()),
            _ => reply(ureq::post(&url).send_json(body)),
        };
        let j = r.json();
        assert_eq!(r.status, 200, "webdriver {method} {path}: {j}");
        j["value"].clone()
    }
    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            serde_json::json!({"using": "css selector", "value": css}),
        );
        v["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("find {css}: {v}"))
            .to_string()
    }
    /// A PNG of the page to the file the environment variable `var` names, if it is set.
    fn screenshot_to(&self, var: &str) {
        use base64::Engine;
        if let Some(p) = std::env::var_os(var) {
            let b64 = self.cmd("GET", "/screenshot", serde_json::Value::Null);
            let png = base64::engine::general_purpose::STANDARD
                .decode(b64.as_str().unwrap())
                .unwrap();
            std::fs::write(p, png).unwrap();
        }
    }

    fn js(&self, script: &str) -> serde_json::Value {
        self.cmd(
            "POST",
            "/execute/sync",
            serde_json::json!({"script": script, "args": []}),
        )
    }
    /// Poll `script` until it returns something truthy.
    fn wait_for(&self, script: &str, what: &str, secs: u64) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == false || v == 0 || v == "") {
                return v;
            }
            if t0.elapsed() > Duration::from_secs(secs) {
                let status = self.js("return document.getElementById('status').textContent");
                panic!("timed out waiting for {what}; page status: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(names: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn start_driver() -> Option<Driver> {
    let (Some(chromium), Some(chromedriver)) = (
        which(&["chromium", "chromium-browser", "google-chrome"]),
        which(&["chromedriver"]),
    ) else {
        impasto::testutil::skip(
            "browser_end_to_end",
            "needs chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver; .ci/run installs them)",
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let base = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while ureq::get(&format!("{base}/status")).call().is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium.to_str().unwrap(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000",
                     "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
        }
    }}});
    let r = reply(ureq::post(&format!("{base}/session")).send_json(caps));
    let j = r.json();
    assert_eq!(r.status, 200, "new session: {j}");
    let session = j["value"]["sessionId"].as_str().unwrap().to_string();
    Some(Driver {
        base,
        session,
        child,
    })
}

#[test]
fn browser_end_to_end() {
    let Some(d) = start_driver() else { return };
    let s = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let img = photo(200, 150);
    let file = dir.path().join("photo.png");
    img.save(&file).unwrap();
    // The last style of the gallery (live twins are not cards of their own).
    let style = *impasto::styles::names()
        .iter()
        .rev()
        .find(|n| !n.ends_with(impasto::styles::LIVE_SUFFIX))
        .unwrap();

    d.cmd(
        "POST",
        "/url",
        serde_json::json!({"url": format!("{}/", s.url)}),
    );
    // The gallery fills in with thumbnails that load.
    d.wait_for(
        "const c = document.querySelectorAll('.style-card img'); \
         return c.length > 0 && [...c].every(i => i.complete && i.naturalWidth > 0) && c.length",
        "the style gallery",
        30,
    );
    // Pick a style, upload the photo through the file input, see the stylized result.
    let card = d.find(&format!(".style-card[data-style='{style}']"));
    d.cmd(
        "POST",
        &format!("/element/{card}/click"),
        serde_json::json!({}),
    );
    let input = d.find("#file");
    d.cmd(
        "POST",
        &format!("/element/{input}/value"),
        serde_json::json!({"text": file.to_str().unwrap()}),
    );
    let ready = d.wait_for(
        &format!(
            "const r = document.getElementById('result'); \
             const busy = document.getElementById('status').textContent.startsWith('Stylizing'); \
             return !busy && r.dataset.ready === '{style}' && r.complete && r.naturalWidth + 'x' + r.naturalHeight"
        ),
        "the stylized image",
        60,
    );
    assert_eq!(ready, "200x150");
    // The result is really stylized: its pixels differ from the photo's.
    let differs = d.js(
        "const a = document.getElementById('before'), b = document.getElementById('result'); \
         const c = document.createElement('canvas'); c.width = 200; c.height = 150; \
         const x = c.getContext('2d'); x.drawImage(a, 0, 0); const p = x.getImageData(0,0,200,150).data; \
         x.drawImage(b, 0, 0); const q = x.getImageData(0,0,200,150).data; \
         let d = 0; for (let i = 0; i < p.length; i += 4) d += Math.abs(p[i]-q[i]); return d / (200*150)",
    );
    assert!(differs.as_f64().unwrap() > 5.0, "mean difference {differs}");
    let status = d.js("return document.getElementById('status').textContent");
    assert!(status.as_str().unwrap().contains("200x150"), "{status}");
    let dl = d.js("const a = document.getElementById('download'); return a.getAttribute('aria-disabled') === 'false' && a.download");
    assert_eq!(dl, format!("photo-{style}.png"));

    // IMPASTO_SCREENSHOT=page.png keeps a picture of the page for a look by eye.
    d.screenshot_to("IMPASTO_SCREENSHOT");

    // Live mode with Chromium's fake camera: frames come back and the frame rate shows.
    let live = d.find("#live-toggle");
    d.cmd(
        "POST",
        &format!("/element/{live}/click"),
        serde_json::json!({}),
    );
    d.wait_for(
        "return +(document.getElementById('fps').dataset.frames || 0) >= 3",
        "three live frames",
        60,
    );
    let fps = d.js("return document.getElementById('fps').textContent");
    println!("browser live mode: {fps}");
    assert!(fps.as_str().unwrap().ends_with("fps"));
    // Live mode runs the style's live twin by default, and says so.
    if let Some(twin) = impasto::styles::live_twin(style) {
        let info = d.js("return document.getElementById('live-info').textContent");
        let want = twin.replace('_', " ");
        assert!(info.as_str().unwrap().starts_with(&want), "{info}");
        // Every style and every network that blends several is a card, but no twin.
        let cards = d.js("return document.querySelectorAll('.style-card').length");
        let names: Vec<&str> = impasto::styles::names()
            .into_iter()
            .chain(impasto::styles::blends())
            .collect();
        let twins = names
            .iter()
            .filter(|n| impasto::styles::live_twin(n).is_some())
            .count();
        assert_eq!(
            cards.as_u64().unwrap() as usize,
            names.len() - twins,
            "twins are not cards"
        );
    }
    d.cmd(
        "POST",
        &format!("/element/{live}/click"),
        serde_json::json!({}),
    );
}

/// A raw HTTP/1.1 exchange (for requests no client library sends): the status, the
/// content type and the body, read until the server closes.
fn raw(url: &str, request: &[u8]) -> (u16, String, Vec<u8>) {
    use std::io::Write;
    let addr = url.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = c.write_all(request);
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (
            String::from_utf8_lossy(&buf[..i]).to_string(),
            buf[i + 4..].to_vec(),
        ),
        None => (text.clone(), Vec::new()),
    };
    let ct = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ct, body)
}

fn json_error(status: u16, ct: &str, body: &[u8]) -> serde_json::Value {
    assert!(
        ct.starts_with("application/json"),
        "{status} {ct}: {}",
        String::from_utf8_lossy(body)
    );
    let j: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(j["error"]["status"], status, "{j}");
    assert!(!j["error"]["message"].as_str().unwrap().is_empty());
    j
}

/// Every error is JSON with the right status — the ones axum
/// and hyper used to answer themselves included — and nothing long is echoed back.
#[test]
fn every_error_is_json() {
    let s = Server::start(&[]);
    let style = impasto::styles::names()[0];
    for m in ["GET", "PUT", "OPTIONS", "DELETE"] {
        let req = format!("{m} /v1/stylize HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let (st, ct, body) = raw(&s.url, req.as_bytes());
        assert_eq!(st, 405, "{m}");
        json_error(405, &ct, &body);
    }
    // Invalid UTF-8 in a path, a WebSocket endpoint without the upgrade headers.
    let (st, ct, body) = raw(
        &s.url,
        b"GET /v1/styles/%FF%FE/thumbnail HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(st, 400);
    json_error(400, &ct, &body);
    let (st, ct, body) = raw(
        &s.url,
        b"GET /v1/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!((400..500).contains(&st), "{st}");
    json_error(st, &ct, &body);
    // Headers too large or too many: 431, JSON.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(500 << 10)
    );
    let (st, ct, body) = raw(&s.url, big.as_bytes());
    assert_eq!(st, 431);
    json_error(431, &ct, &body);
    let mut many = String::from("GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    for i in 0..150 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (st, ct, body) = raw(&s.url, many.as_bytes());
    assert_eq!(st, 431);
    json_error(431, &ct, &body);
    // A 30 KB parameter name is refused without being echoed whole.
    let key = "k".repeat(30 << 10);
    let r = s.post(
        &format!("/v1/stylize?style={style}&{key}=1"),
        "image/png",
        b"x",
    );
    r.assert_error(400, "bad-request");
    assert!(r.body.len() < 2000, "echoed {} bytes", r.body.len());
}

/// A client that does not finish its headers within
/// --read-timeout is disconnected, one that stalls mid-body gets a JSON 408, and beyond
/// --max-connections new connections get a JSON 503 at once; the server serves normally
/// throughout and after.
#[test]
fn slow_and_stalled_clients_are_not_held_forever() {
    use std::io::Write;
    let s = Server::start(&["--read-timeout", "1", "--max-connections", "20"]);
    let addr = s.url.trim_start_matches("http://").to_string();
    let t0 = Instant::now();
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.write_all(b"POST /v1/stylize HTTP/1.1\r\nhost: x\r\n")
            .unwrap();
        held.push(c);
    }
    std::thread::sleep(Duration::from_millis(200));
    // Over the cap: refused at once, in JSON.
    let (st, ct, body) = raw(&s.url, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(st, 503);
    json_error(503, &ct, &body);
    // The slow ones are closed by the server after about a second.
    for c in &mut held {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 64];
        let n = c.read(&mut b).unwrap_or(0);
        let _ = n;
    }
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_secs(8),
        "slow clients held {waited:?}"
    );
    // Room again: a normal request works.
    assert_eq!(s.health()["status"], "ok");
    // A body that stalls: 408 in JSON.
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    let style = impasto::styles::names()[0];
    c.write_all(
        format!("POST /v1/stylize?style={style} HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\ncontent-length: 5000\r\nconnection: close\r\n\r\n0123456789").as_bytes(),
    )
    .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"category\":\"timeout\""), "{text}");
}

/// Many live clients at 10 frames/s on two workers all get
/// frames (the workers are shared first come, first served), and every frame a client
/// sends is answered: stylized, or skipped because a newer one replaced it.
#[test]
fn live_clients_share_the_workers_fairly() {
    let s = Server::start(&["--workers", "2"]);
    let style = impasto::styles::names()[0];
    let ws_url = s.url.replace("http://", "ws://") + "/v1/live";
    let frame = encoded(&photo(160, 120), ImageFormat::Jpeg);
    let clients = 12;
    let secs = 6.0;
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (ws_url, frame, style) = (ws_url.clone(), frame.clone(), style.to_string());
            std::thread::spawn(move || {
                use tungstenite::Message;
                let (mut ws, _) = tungstenite::connect(ws_url.as_str()).unwrap();
                if let tungstenite::stream::MaybeTlsStream::Plain(t) = ws.get_ref() {
                    t.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                }
                ws.send(Message::Text(format!(r#"{{"style":"{style}"}}"#).into()))
                    .unwrap();
                let (mut sent, mut stylized, mut skipped) = (0u64, 0u64, 0u64);
                let t0 = Instant::now();
                let mut next = Duration::ZERO;
                // Send at 10 fps for `secs`, then wait for the last answers.
                while t0.elapsed() < Duration::from_secs_f64(secs + 15.0)
                    && (t0.elapsed() < Duration::from_secs_f64(secs) || stylized + skipped < sent)
                {
                    if t0.elapsed() >= next && t0.elapsed() < Duration::from_secs_f64(secs) {
                        ws.send(Message::Binary(frame.clone().into())).unwrap();
                        sent += 1;
                        next += Duration::from_millis(100);
                    }
                    match ws.read() {
                        Ok(Message::Text(t)) => {
                            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                            assert!(v["error"].is_null(), "{v}");
                            if v.get("skipped").is_some() {
                                skipped += 1;
                            } else {
                                stylized += 1;
                            }
                        }
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e))
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                ws.close(None).ok();
                (sent, stylized, skipped)
            })
        })
        .collect();
    let results: Vec<(u64, u64, u64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!("live fairness, {clients} clients at 10 fps on 2 workers (sent, stylized, skipped): {results:?}");
    let min = results.iter().map(|r| r.1).min().unwrap();
    let max = results.iter().map(|r| r.1).max().unwrap();
    for &(sent, stylized, skipped) in &results {
        assert_eq!(
            sent,
            stylized + skipped,
            "every frame answered: {results:?}"
        );
    }
    // Throughput depends on the machine (a loaded CI box gives 2-3 frames each, a quiet one
    // 8-9); the property is that nobody starves and the shares stay within 3x (before the fix
    // two clients got everything and ten got nothing).
    assert!(min >= 1, "a client was starved: {results:?}");
    assert!(min * 3 >= max, "unfair share: {results:?}");
}

/// SIGTERM lets the request in flight finish, then the
/// server exits 0 within a bounded time.
#[cfg(unix)]
#[test]
fn sigterm_finishes_requests_in_flight_then_exits() {
    let mut s = Server::start(&["--workers", "1"]);
    let style = impasto::styles::names()[0];
    let img = encoded(&photo(900, 700), ImageFormat::Png);
    let url = format!("{}/v1/stylize?style={style}", s.url);
    let h = std::thread::spawn(move || {
        reply(
            ureq::post(&url)
                .set("content-type", "image/png")
                .send_bytes(&img),
        )
    });
    std::thread::sleep(Duration::from_millis(400));
    let t0 = Instant::now();
    Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    let r = h.join().unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let st = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "server did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(st.success(), "{st:?}");
}

/// An 18 KB JPEG whose header claims 7000×7000 is refused at
/// once (400), without holding a worker while its size is paid for.
#[test]
fn a_small_jpeg_claiming_a_huge_size_is_refused_at_once() {
    let s = Server::start(&["--workers", "1"]);
    let style = impasto::styles::names()[0];
    let mut jpg = encoded(&photo(256, 256), ImageFormat::Jpeg);
    let sof = jpg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpg[sof + 5..sof + 7].copy_from_slice(&7000u16.to_be_bytes());
    jpg[sof + 7..sof + 9].copy_from_slice(&7000u16.to_be_bytes());
    jpg.truncate(jpg.len().min(18 << 10) - 100);
    let t0 = Instant::now();
    for _ in 0..5 {
        let r = s.post(&format!("/v1/stylize?style={style}"), "image/jpeg", &jpg);
        r.assert_error(400, "image");
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

/// A model of several styles over the API and on the page: `/v1/styles` lists its styles,
/// `mix=` picks or blends them (a bad mix is a 400 naming the styles), and the page shows a
/// slider per style whose blend reaches the result and the live frames.
#[test]
fn a_model_of_several_styles_mixes_over_the_api_and_on_the_page() {
    let dir = tempfile::tempdir().unwrap();
    impasto::testutil::styled_model(TransformerConfig::new(Arch::Johnson), 3, 5)
        .save(&dir.path().join("trio.safetensors"), false)
        .unwrap();
    let s = Server::start(&["--models", dir.path().to_str().unwrap()]);
    let styles = s.get("/v1/styles").json();
    let trio = styles["styles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "trio")
        .unwrap()
        .clone();
    assert_eq!(trio["styles"], serde_json::json!(["a", "b", "c"]));
    let png = encoded(&photo(64, 48), ImageFormat::Png);
    let run = |q: &str| s.post(&format!("/v1/stylize?style=trio{q}"), "image/png", &png);
    let (plain, a, b, ab) = (run(""), run("&mix=a"), run("&mix=b"), run("&mix=a=1,b=1"));
    for r in [&plain, &a, &b, &ab] {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(plain.body, a.body, "no mix: the first style");
    assert_ne!(a.body, b.body);
    assert_ne!(ab.body, a.body);
    assert_eq!(ab.header("x-impasto-mix"), Some("a=0.5,b=0.5"));
    for (q, want) in [
        ("&mix=zz", "its styles: a, b, c"),
        ("&mix=a=0", "all zero"),
        ("&mix=a=-1", "0 or more"),
    ] {
        let r = run(q);
        r.assert_error(400, "bad-request");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(want),
            "{q}"
        );
    }

    // When the built-ins are one such network (`builtins`): it blends them, each built-in
    // style is its row (the same picture either way), and the live twin holds the same
    // styles.
    let builtin_net = impasto::styles::blends()
        .into_iter()
        .find(|n| !n.ends_with(impasto::styles::LIVE_SUFFIX));
    if let Some(whole) = builtin_net {
        let entry = |name: &str| {
            styles["styles"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == name)
                .unwrap_or_else(|| panic!("{name} listed"))
                .clone()
        };
        let builtins = entry(whole);
        let rows = impasto::styles::builtin(whole)
            .unwrap()
            .unwrap()
            .style_names();
        assert_eq!(builtins["styles"], serde_json::json!(rows));
        let twin = impasto::styles::live_twin(whole).expect("the built-ins' twin");
        assert_eq!(builtins["live"], twin);
        assert_eq!(entry(twin)["styles"], serde_json::json!(rows));
        let row = &rows[1];
        assert_eq!(entry(row)["live"], format!("{row}_live"));
        // Each style reports its own weight, the network all of them.
        let weight = &builtins["trained"]["style_weights"][row];
        assert!(weight.is_number(), "{builtins}");
        assert_eq!(&entry(row)["trained"]["style_weight"], weight);
        let one = s.post(&format!("/v1/stylize?style={row}"), "image/png", &png);
        let via = s.post(
            &format!("/v1/stylize?style={whole}&mix={row}"),
            "image/png",
            &png,
        );
        assert_eq!((one.status, via.status), (200, 200));
        assert_eq!(one.body, via.body, "{row} is its row of {whole}");
    }

    let Some(d) = start_driver() else { return };
    let file = dir.path().join("photo.png");
    photo(120, 90).save(&file).unwrap();
    d.cmd(
        "POST",
        "/url",
        serde_json::json!({"url": format!("{}/", s.url)}),
    );
    d.wait_for(
        "return document.querySelectorAll(\".style-card[data-style='trio']\").length",
        "the gallery",
        30,
    );
    let card = d.find(".style-card[data-style='trio']");
    d.cmd(
        "POST",
        &format!("/element/{card}/click"),
        serde_json::json!({}),
    );
    let sliders = d.js("return document.getElementById('mix-panel').hidden ? 0 : document.querySelectorAll('#mix input').length");
    assert_eq!(sliders, 3, "a slider per style");
    // Half a, half c.
    d.js("const r = document.querySelectorAll('#mix input'); r[2].value = 100; r[2].dispatchEvent(new Event('input')); return 1");
    let input = d.find("#file");
    d.cmd(
        "POST",
        &format!("/element/{input}/value"),
        serde_json::json!({"text": file.to_str().unwrap()}),
    );
    let shown = d.wait_for(
        "const t = document.getElementById('status').textContent; return t.includes('a=0.5,c=0.5') && t",
        "the blended result",
        60,
    );
    assert!(shown.as_str().unwrap().contains("120x90"), "{shown}");
    d.screenshot_to("IMPASTO_SCREENSHOT_MIX");
    // Live frames with the blend; then another blend applies to the next frames.
    let live = d.find("#live-toggle");
    d.cmd(
        "POST",
        &format!("/element/{live}/click"),
        serde_json::json!({}),
    );
    d.wait_for(
        "return document.getElementById('live-info').textContent.includes('a=0.5,c=0.5') && +(document.getElementById('fps').dataset.frames || 0) >= 2",
        "live frames of the blend",
        60,
    );
    d.js("const r = document.querySelectorAll('#mix input'); r[0].value = 0; r[0].dispatchEvent(new Event('input')); return 1");
    d.wait_for(
        "return document.getElementById('live-info').textContent.includes('(c=1)')",
        "live frames of the new mix",
        60,
    );
    d.cmd(
        "POST",
        &format!("/element/{live}/click"),
        serde_json::json!({}),
    );
    // The page offers blends of the built-ins: a slider per painting.
    if let Some(whole) = builtin_net {
        let card = d.find(&format!(".style-card[data-style='{whole}']"));
        d.cmd(
            "POST",
            &format!("/element/{card}/click"),
            serde_json::json!({}),
        );
        let sliders = d.js("return document.getElementById('mix-panel').hidden ? 0 : document.querySelectorAll('#mix input').length");
        let n = impasto::styles::builtin(whole)
            .unwrap()
            .unwrap()
            .style_count();
        assert_eq!(sliders, n, "a slider per built-in style");
    }
}
