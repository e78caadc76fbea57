//! The parameters of a stylize request (query, form fields or live settings): parsed and
//! checked once, each refusal naming the parameter.
use super::error::ApiError;
use super::App;
use crate::error::clip;
use crate::stylize::StylizeOptions;
use image::ImageFormat;
use std::collections::HashMap;

/// Parsed `/v1/stylize` (and live) settings.
#[derive(Clone, Debug)]
pub struct Params {
    pub style: String,
    pub strength: f32,
    pub preserve_color: bool,
    pub max_size: Option<u32>,
    pub format: Option<ImageFormat>,
    /// Mirror margin around the picture (see `StylizeOptions::margin`); `None`: the model's.
    pub margin: Option<usize>,
    /// Stroke size (see `stylize::Scale`).
    pub scale: crate::stylize::Scale,
    /// A model of several styles: the weight of each (normalised); None: its first style.
    pub mix: Option<Vec<f64>>,
}

fn parse_bool(k: &str, v: &str) -> Result<bool, ApiError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ApiError::bad(format!(
            "{k}={:?}: expected true or false",
            clip(v, 64)
        ))),
    }
}

impl Params {
    pub fn parse(q: &HashMap<String, String>, app: &App) -> Result<Params, ApiError> {
        const KNOWN: [&str; 8] = [
            "style",
            "mix",
            "strength",
            "preserve_color",
            "max_size",
            "format",
            "margin",
            "scale",
        ];
        if let Some(k) = q.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(ApiError::bad(format!(
                "unknown parameter {:?}; known: {}",
                clip(k, 64),
                KNOWN.join(", ")
            )));
        }
        let style = match q.get("style") {
            Some(s) => s.clone(),
            None => {
                return Err(ApiError::bad(format!(
                    "missing style=; styles: {}",
                    app.styles.names().join(", ")
                )))
            }
        };
        let Some(entry) = app.styles.get(&style) else {
            return Err(ApiError::unknown_style(app, &style));
        };
        let mix = match q.get("mix") {
            None => None,
            Some(v) => Some(
                crate::model::Mix::parse(v)
                    .and_then(|m| m.weights(&entry.styles))
                    .map_err(|e| ApiError::bad(format!("mix={:?}: {e}", clip(v, 64))))?,
            ),
        };
        let strength = match q.get("strength") {
            None => 1.0,
            Some(v) => match v.parse::<f32>() {
                Ok(s) if (0.0..=1.0).contains(&s) => s,
                _ => {
                    return Err(ApiError::bad(format!(
                        "strength={:?}: expected a number from 0 to 1",
                        clip(v, 64)
                    )))
                }
            },
        };
        let preserve_color = match q.get("preserve_color") {
            None => false,
            Some(v) => parse_bool("preserve_color", v)?,
        };
        let max_size = match q.get("max_size") {
            None => None,
            Some(v) => match v.parse::<u32>() {
                Ok(s) if s > 0 => Some(s),
                _ => {
                    return Err(ApiError::bad(format!(
                        "max_size={:?}: expected a positive whole number of pixels",
                        clip(v, 64)
                    )))
                }
            },
        };
        let format = match q.get("format").map(|f| f.to_ascii_lowercase()) {
            None => None,
            Some(f) => Some(match f.as_str() {
                "png" => ImageFormat::Png,
                "jpg" | "jpeg" => ImageFormat::Jpeg,
                "webp" => ImageFormat::WebP,
                _ => {
                    return Err(ApiError::bad(format!(
                        "format={:?}: expected png, jpeg or webp",
                        clip(&f, 64)
                    )))
                }
            }),
        };
        let margin = match q.get("margin") {
            None => None,
            Some(v) => Some(
                crate::model::transformer::parse_margin(v)
                    .map_err(|e| ApiError::bad(format!("margin={e}")))?,
            ),
        };
        let scale = match q.get("scale") {
            None => crate::stylize::Scale::Auto,
            Some(v) => crate::stylize::Scale::parse(v).map_err(|_| {
                ApiError::bad(format!(
                    "scale={:?}: expected auto or a stroke scale from 0.25 to 16",
                    clip(v, 64)
                ))
            })?,
        };
        Ok(Params {
            style,
            strength,
            preserve_color,
            max_size,
            format,
            margin,
            scale,
            mix,
        })
    }

    pub fn options(&self, max_side: u32) -> StylizeOptions {
        StylizeOptions {
            max_size: Some(self.max_size.unwrap_or(max_side).min(max_side)),
            strength: self.strength,
            preserve_color: self.preserve_color,
            margin: self.margin,
            scale: self.scale,
            ..Default::default()
        }
    }
}
