//! `impasto serve`'s work ends with its client: a request that times out or whose client
//! leaves stops its computation and frees its worker, the shutdown grace is a real bound,
//! live frames have a budget and costly settings are refused, and a live frame's answer
//! does not wait on the network stack.
use image::ImageFormat;
use impasto::testutil::photo;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::server::{encoded, multipart, reply, Server, MULTIPART_BOUNDARY};

fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !done() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    t0.elapsed()
}

/// A request that would take many seconds (a 2048-px picture at stroke scale 0.25 is a
/// 8192-px network pass) answers 503 at `--timeout`, and its worker is free again at once:
/// the next request is answered and `/healthz` shows nothing in flight. The same when the
/// client disconnects without waiting.
#[test]
fn timed_out_and_abandoned_requests_free_their_worker() {
    let s = Server::start(&["--workers", "1", "--timeout", "1", "--max-side", "2048"]);
    let style = impasto::styles::names()[0];
    let big = encoded(&photo(2048, 1365), ImageFormat::Jpeg);
    let small = encoded(&photo(64, 48), ImageFormat::Png);
    let url = format!("{}/v1/stylize?style={style}&scale=0.25", s.url);

    let t0 = Instant::now();
    let r = reply(
        ureq::post(&url)
            .set("content-type", "image/jpeg")
            .send_bytes(&big),
    );
    r.assert_error(503, "timeout");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let freed = wait_until("the worker is free", 15, || s.health()["in_flight"] == 0);
    eprintln!("timed-out request: worker free {freed:?} after the 503");
    let r = s.post(&format!("/v1/stylize?style={style}"), "image/png", &small);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // A client that sends the request and leaves.
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    let head = format!(
        "POST /v1/stylize?style={style}&scale=0.25 HTTP/1.1\r\nhost: x\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(&big).unwrap();
    wait_until("the request starts", 5, || s.health()["in_flight"] == 1);
    drop(c);
    let freed = wait_until("the worker is free", 15, || s.health()["in_flight"] == 0);
    eprintln!("abandoned request: worker free {freed:?} after the client left");
    let r = s.post(&format!("/v1/stylize?style={style}"), "image/png", &small);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// SIGTERM with `--shutdown-grace 1` while a long request runs: the process ends within
/// a few seconds of the grace, not when the work would have finished.
#[test]
fn the_shutdown_grace_is_a_real_bound() {
    let mut s = Server::start(&[
        "--workers",
        "1",
        "--timeout",
        "600",
        "--max-side",
        "2048",
        "--shutdown-grace",
        "1",
    ]);
    let style = impasto::styles::names()[0];
    let big = encoded(&photo(2048, 1365), ImageFormat::Jpeg);
    let url = format!("{}/v1/stylize?style={style}&scale=0.25", s.url);
    let h = std::thread::spawn(move || {
        let _ = ureq::post(&url)
            .set("content-type", "image/jpeg")
            .send_bytes(&big);
    });
    wait_until("the request starts", 10, || s.health()["in_flight"] == 1);
    Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    let took = wait_until("the server exits", 10, || {
        s.child.try_wait().unwrap().is_some()
    });
    eprintln!("exit {took:?} after SIGTERM with a 1 s grace");
    let _ = h.join();
}

fn live(
    s: &Server,
) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>> {
    let ws_url = s.url.replace("http://", "ws://") + "/v1/live";
    tungstenite::connect(ws_url.as_str()).expect("websocket").0
}

fn next_text(
    ws: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
) -> serde_json::Value {
    loop {
        match ws.read().unwrap() {
            tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            tungstenite::Message::Binary(_) => panic!("binary before its record"),
            _ => {}
        }
    }
}

/// Live settings that would cost far more than a frame may are refused up front (400
/// naming them); a frame over the per-frame budget is stopped and answered with an error,
/// and the connection goes on.
#[test]
fn live_frames_have_a_budget() {
    use tungstenite::Message;
    let s = Server::start(&["--workers", "1", "--live-frame-budget", "0.05"]);
    let style = impasto::styles::names()[0];
    let mut ws = live(&s);
    for bad in [
        format!(r#"{{"style":"{style}","scale":"0.25"}}"#),
        format!(r#"{{"style":"{style}","margin":"256"}}"#),
    ] {
        ws.send(Message::Text(bad.clone().into())).unwrap();
        let e = next_text(&mut ws);
        assert_eq!(e["error"]["status"], 400, "{bad}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("cost too much"),
            "{e}"
        );
    }
    // A 640×480 frame of the full network takes far longer than 50 ms on this machine.
    ws.send(Message::Text(format!(r#"{{"style":"{style}"}}"#).into()))
        .unwrap();
    let frame = encoded(&photo(640, 480), ImageFormat::Jpeg);
    let t0 = Instant::now();
    ws.send(Message::Binary(frame.into())).unwrap();
    let e = next_text(&mut ws);
    assert_eq!(e["error"]["category"], "frame-too-slow", "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(s.health()["in_flight"], 0);
}

/// One frame in flight at a time, as the page sends them: the client's round trip exceeds
/// the server's own time per frame by under 10 ms on loopback (Nagle's algorithm with the
/// client's delayed ACK once added ~40 ms to every frame).
#[test]
fn a_live_frames_round_trip_is_the_servers_time() {
    use tungstenite::Message;
    let s = Server::start(&["--workers", "1"]);
    let style = impasto::styles::names()
        .into_iter()
        .find(|n| n.ends_with("_live"))
        .unwrap_or(impasto::styles::names()[0]);
    let mut ws = live(&s);
    ws.send(Message::Text(format!(r#"{{"style":"{style}"}}"#).into()))
        .unwrap();
    let frame = encoded(&photo(320, 240), ImageFormat::Jpeg);
    let mut excess = Vec::new();
    for i in 0..12 {
        let t0 = Instant::now();
        ws.send(Message::Binary(frame.clone().into())).unwrap();
        let rec = next_text(&mut ws);
        assert!(rec["error"].is_null(), "{rec}");
        match ws.read().unwrap() {
            Message::Binary(_) => {}
            m => panic!("expected the JPEG, got {m:?}"),
        }
        let rtt = t0.elapsed().as_secs_f64() * 1e3;
        if i >= 2 {
            excess.push(rtt - rec["ms"].as_f64().unwrap());
        }
    }
    excess.sort_by(f64::total_cmp);
    let median = excess[excess.len() / 2];
    eprintln!(
        "live round trip minus server time: median {median:.1} ms over {} frames",
        excess.len()
    );
    assert!(
        median < 10.0,
        "round trip exceeds the server's time by {median:.1} ms"
    );
}

/// A WebSocket message over `--max-bytes` is answered with close code 1009 and a reason.
#[test]
fn an_oversized_live_message_gets_a_close_frame() {
    use tungstenite::Message;
    let s = Server::start(&["--max-bytes", "10000"]);
    let mut ws = live(&s);
    let _ = ws.send(Message::Binary(vec![0u8; 50_000].into()));
    let t0 = Instant::now();
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1009, "{f:?}");
                assert!(!f.reason.is_empty());
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}

/// Ambiguous requests are refused naming what is ambiguous instead of half-used: two
/// pictures in one form, a parameter in both the query and the form or twice in the
/// query; a compressed body names its encoding; a 405 lists the methods allowed.
#[test]
fn ambiguous_requests_are_refused_by_name() {
    let s = Server::start(&[]);
    let style = impasto::styles::names()[0];
    let png = encoded(&photo(24, 16), ImageFormat::Png);
    let ct = format!("multipart/form-data; boundary={MULTIPART_BOUNDARY}");
    let two = multipart(&[("a", Some("a.png"), &png), ("b", Some("b.png"), &png)]);
    let r = s.post(&format!("/v1/stylize?style={style}"), &ct, &two);
    r.assert_error(400, "bad-request");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("more than one image"));
    let both = multipart(&[
        ("style", None, style.as_bytes()),
        ("image", Some("a.png"), &png),
    ]);
    let r = s.post(&format!("/v1/stylize?style={style}"), &ct, &both);
    r.assert_error(400, "bad-request");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("\"style\" is given twice"));
    let r = s.post(
        &format!("/v1/stylize?style={style}&style={style}"),
        "image/png",
        &png,
    );
    r.assert_error(400, "bad-request");
    let r = reply(
        ureq::post(&format!("{}/v1/stylize?style={style}", s.url))
            .set("content-type", "image/png")
            .set("content-encoding", "gzip")
            .send_bytes(&png),
    );
    r.assert_error(415, "unsupported-media-type");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("gzip"));
    let r = reply(ureq::delete(&format!("{}/v1/stylize", s.url)).call());
    r.assert_error(405, "method-not-allowed");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(allowed: POST)"),
        "{}",
        r.json()
    );
    // The form alone is fine.
    let one = multipart(&[
        ("style", None, style.as_bytes()),
        ("image", Some("a.png"), &png),
    ]);
    assert_eq!(s.post("/v1/stylize", &ct, &one).status, 200);
}
