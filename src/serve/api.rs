//! The HTTP handlers; every error answer is an [`ApiError`] (`super::error`).

pub use super::params::Params;
use super::App;
use crate::stylize::{stylize as run_stylize, StylizeOptions};
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use futures_util::StreamExt;
use image::ImageFormat;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

pub use super::error::ApiError;
pub use crate::error::clip;

fn category_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad-request",
        404 => "not-found",
        405 => "method-not-allowed",
        408 => "timeout",
        413 => "too-large",
        415 => "unsupported-media-type",
        426 => "upgrade-required",
        431 => "headers-too-large",
        503 => "busy",
        s if s >= 500 => "internal",
        _ => "bad-request",
    }
}

/// Every request passes here: header limits first (a JSON 431), then every error answer
/// that is not already JSON — axum's own (405, a path or query that does not parse, a
/// WebSocket request without upgrade headers, …) — becomes `{"error": …}` with the same
/// status and headers.
pub async fn guard(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let n = req.headers().len();
    let bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if n > super::MAX_HEADERS || bytes > super::MAX_HEADER_BYTES {
        let mut r = ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            format!(
                "request headers are {bytes} bytes in {n} fields; this server takes at most {} bytes in {} fields",
                super::MAX_HEADER_BYTES,
                super::MAX_HEADERS
            ),
        )
        .into_response();
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let method = req.method().clone();
    let path = clip(&String::from_utf8_lossy(req.uri().path().as_bytes()), 100);
    let r = next.run(req).await;
    let status = r.status();
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return r;
    }
    let (mut parts, body) = r.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = clip(String::from_utf8_lossy(&text).trim(), 300);
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            // The router adds its `Allow` header after this layer: name the methods from
            // the route table instead.
            let allow = allowed_methods(&path);
            parts
                .headers
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            format!("{method} is not allowed on {path} (allowed: {allow})")
        }
        _ if text.is_empty() => format!(
            "{} ({method} {path})",
            status.canonical_reason().unwrap_or("error")
        ),
        _ => text,
    };
    let e = ApiError::new(status, category_of(status), message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(e.json().to_string()))
}

/// The methods each route of [`super::router`] answers.
fn allowed_methods(path: &str) -> &'static str {
    match path {
        "/v1/stylize" => "POST",
        _ => "GET, HEAD",
    }
}

pub async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "no such endpoint; see GET /v1/styles, POST /v1/stylize, GET /v1/live, GET /healthz",
    )
}

pub async fn healthz(State(app): State<Arc<App>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "styles": app.styles.len(),
        "workers": app.cfg.workers,
        "queue": app.cfg.queue,
        "in_flight": app.pool.in_flight(),
        "device": app.cfg.device.describe(),
    }))
}

pub async fn styles(State(app): State<Arc<App>>) -> axum::Json<serde_json::Value> {
    let list: Vec<_> = app
        .styles
        .iter()
        .map(|s| {
            let prov = crate::model::provenance::Provenance::from_metadata(&s.model.metadata)
                .and_then(|p| p.ok());
            // A style of a network of several (a built-in, or a mix of one style) records
            // its own steps and weight; a network of several, each style's weight.
            let entries = s.model.styles();
            let several = entries.len() > 1;
            let own = entries
                .first()
                .cloned()
                .filter(|_| !several)
                .unwrap_or_default();
            let weights: serde_json::Map<String, serde_json::Value> = entries
                .into_iter()
                .filter(|_| several)
                .map(|e| (e.name, e.style_weight.into()))
                .collect();
            let trained = match prov {
                Some(p) => {
                    let t = p.train.unwrap_or_default();
                    let weight = match several {
                        true => None,
                        false => own.style_weight.or(t.loss.map(|l| l.style_weight)),
                    };
                    serde_json::json!({
                        "steps": own.steps.or(p.steps_done),
                        "image_size": t.image_size,
                        "style_weight": weight,
                        "style_weights": several.then_some(weights),
                        "photos": t.dataset_size,
                    })
                }
                None => serde_json::Value::Null,
            };
            let live = app.styles.twin_of(&s.name).map(|t| t.name.clone());
            let teacher = app.styles.teacher_of(&s.name).map(|t| t.name.clone());
            serde_json::json!({
                "name": s.name,
                "source": s.source,
                "live": live,
                "live_of": teacher,
                "architecture": s.model.config.arch,
                "parameters": s.model.plan().param_count(),
                "margin": s.model.margin().unwrap_or(crate::stylize::DEFAULT_MARGIN),
                "trained": trained,
                "thumbnail": format!("/v1/styles/{}/thumbnail", s.name),
                "styles": s.styles,
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "styles": list }))
}

pub async fn thumbnail(
    State(app): State<Arc<App>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    let s = app
        .styles
        .get(&name)
        .ok_or_else(|| ApiError::unknown_style(&app, &name))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        s.thumbnail.clone(),
    )
        .into_response())
}

/// The body, refusing more than `limit` bytes (413) without reading further.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    stall: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let too_large = |n: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("request body is {n} bytes, over this server's limit of {limit}"),
        )
    };
    let mut stream = body.into_data_stream();
    // Refused bodies are still read (and dropped), up to a bound, so that the client gets to
    // read the 413 instead of a connection reset while it is still sending.
    let drain = |mut stream: axum::body::BodyDataStream| async move {
        let cap = limit.saturating_mul(4).max(64 << 20);
        let mut seen = 0usize;
        let read = async {
            while let Some(Ok(c)) = stream.next().await {
                seen += c.len();
                if seen > cap {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read).await;
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            drain(stream).await;
            return Err(too_large(len.to_string()));
        }
    }
    let mut buf = Vec::new();
    loop {
        // A client that stops sending mid-body is not waited for forever.
        let Ok(next) = tokio::time::timeout(stall, stream.next()).await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the request body stalled: nothing arrived for {} s after {} bytes",
                    stall.as_secs_f64(),
                    buf.len()
                ),
            ));
        };
        let Some(chunk) = next else { break };
        let chunk =
            chunk.map_err(|e| ApiError::bad(format!("could not read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            drain(stream).await;
            return Err(too_large(format!("more than {limit}")));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// The image from a multipart form (the field `image`, else the first file), with any text
/// fields named like parameters added to `params` (the query string wins).
async fn from_multipart(
    content_type: &str,
    body: Bytes,
    params: &mut HashMap<String, String>,
) -> Result<Bytes, ApiError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| ApiError::bad(format!("bad multipart request: {e}")))?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut image = None;
    while let Some(field) = mp
        .next_field()
        .await
        .map_err(|e| ApiError::bad(format!("bad multipart request: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let is_file = field.file_name().is_some();
        let data = field
            .bytes()
            .await
            .map_err(|e| ApiError::bad(format!("bad multipart request: {e}")))?;
        // One picture, and each parameter once (here or in the query): an ambiguous
        // request is refused rather than half-used.
        if name == "image" || is_file {
            if image.is_some() {
                return Err(ApiError::bad(
                    "multipart request with more than one image file; send one picture per request",
                ));
            }
            image = Some(data);
        } else {
            let v = String::from_utf8_lossy(&data).into_owned();
            if params.contains_key(&name) {
                return Err(ApiError::bad(format!(
                    "parameter {:?} is given twice (in the query and the form, or twice in the form); give it once",
                    clip(&name, 64)
                )));
            }
            params.insert(name, v);
        }
    }
    image.ok_or_else(|| ApiError::bad("multipart request without an image file field"))
}

pub async fn stylize(
    State(app): State<Arc<App>>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut query = HashMap::new();
    for (k, v) in pairs {
        if query.contains_key(&k) {
            return ApiError::bad(format!(
                "parameter {:?} is given twice in the query; give it once",
                clip(&k, 64)
            ))
            .into_response();
        }
        query.insert(k, v);
    }
    if let Some(enc) = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|e| !e.is_empty() && e != "identity")
    {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!(
                "content-encoding {:?} is not accepted: send the picture's bytes as they are (images are already compressed)",
                clip(&enc, 64)
            ),
        )
        .into_response();
    }
    let limit = app.cfg.timeout;
    match tokio::time::timeout(limit, stylize_inner(app.clone(), query, headers, body)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "request timed out after {:.3} s (server busy or image too large for it)",
                limit.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

async fn stylize_inner(
    app: Arc<App>,
    mut query: HashMap<String, String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut bytes = read_body(body, &headers, app.cfg.max_bytes, app.cfg.read_timeout).await?;
    if content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        bytes = from_multipart(&content_type, bytes, &mut query).await?;
    }
    let params = Params::parse(&query, &app)?;
    if bytes.is_empty() {
        return Err(ApiError::bad(
            "empty request: send the image as the body or as a multipart file field",
        ));
    }
    let ticket = app.pool.admit().ok_or_else(|| ApiError::busy(&app))?;
    // When this future is dropped (the request timed out, or its client left), the work
    // stops at its next layer and the worker is free again.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stop_on_drop = super::StopOnDrop(stop.clone());
    let style = params.style.clone();
    let mix = params.mix.clone();
    let on = app.clone();
    let opts = StylizeOptions {
        cancel: app.cancel(&stop),
        ..params.options(app.cfg.max_side)
    };
    let max_pixels = app.cfg.max_pixels;
    let fmt = params.format;
    let job = move || -> Result<(Vec<u8>, ImageFormat, u32, u32, f64), ApiError> {
        let t0 = Instant::now();
        if opts.cancel.is_cancelled() {
            return Err(crate::Error::Cancelled.into());
        }
        let decoded = crate::imageio::read_bytes(
            &bytes,
            std::path::Path::new("request body"),
            &crate::imageio::Limits::max_pixels(max_pixels),
        )?;
        let fmt = fmt.unwrap_or(match image::guess_format(&bytes) {
            Ok(ImageFormat::Jpeg) => ImageFormat::Jpeg,
            Ok(ImageFormat::WebP) => ImageFormat::WebP,
            _ => ImageFormat::Png,
        });
        let model = on
            .styles
            .get(&style)
            .expect("checked")
            .network(mix.as_deref());
        let out = run_stylize(&model, decoded, &opts, None).map_err(crate::Error::from)?;
        let mut buf = Vec::new();
        crate::imageio::encode(&out, fmt, &mut buf).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encode", e.to_string())
        })?;
        Ok((
            buf,
            fmt,
            out.width(),
            out.height(),
            t0.elapsed().as_secs_f64(),
        ))
    };
    let (buf, fmt, w, h, secs) = app
        .pool
        .run(ticket, job)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))??;
    let ext = fmt.extensions_str()[0];
    let mut r = (
        [(header::CONTENT_TYPE, fmt.to_mime_type())],
        Body::from(buf),
    )
        .into_response();
    let h_ = r.headers_mut();
    let put = |h_: &mut HeaderMap, k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h_.insert(k, v);
        }
    };
    put(
        h_,
        "content-disposition",
        format!("inline; filename=\"stylized-{}.{ext}\"", params.style),
    );
    put(h_, "x-impasto-style", params.style.clone());
    if let Some(w) = &params.mix {
        let names = &app.styles.get(&params.style).expect("checked").styles;
        put(h_, "x-impasto-mix", crate::model::Mix::describe(names, w));
    }
    put(h_, "x-impasto-size", format!("{w}x{h}"));
    put(h_, "x-impasto-seconds", format!("{secs:.4}"));
    Ok(r)
}
