//! The server's error answers: `{"error": {"status", "category", "message"}}`.
use super::App;
use crate::error::clip;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An error answer: `{"error": {"status", "category", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub category: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, category: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            category,
            message: message.into(),
        }
    }
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }
    pub fn busy(app: &App) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "server busy: {} images in progress or waiting (workers {}, queue {}); retry later",
                app.pool.in_flight(),
                app.cfg.workers,
                app.cfg.queue
            ),
        )
    }
    /// A live frame stopped at its time budget.
    pub fn frame_too_slow(budget: std::time::Duration) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "frame-too-slow",
            format!(
                "the frame was stopped after this server's budget of {:.1} s per live frame; choose a smaller max_size, scale or margin",
                budget.as_secs_f64()
            ),
        )
    }
    pub fn unknown_style(app: &App, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown-style",
            format!(
                "unknown style {:?}; styles: {}",
                clip(name, 64),
                app.styles.names().join(", ")
            ),
        )
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "status": self.status.as_u16(),
            "category": self.category,
            "message": self.message,
        }})
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        use crate::Error as E;
        let status = match &e {
            E::Image { .. } => StatusCode::BAD_REQUEST,
            E::ImageTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            E::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match &e {
            // The CLI's hint does not apply to a server.
            E::ImageTooLarge { w, h, limit, .. } => format!(
                "image is {w}x{h} = {} pixels, over this server's limit of {limit}",
                *w as u64 * *h as u64
            ),
            _ => e.to_string(),
        };
        ApiError::new(status, e.category(), message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.json())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}
