//! How a model file was made: the `impasto.provenance` metadata, typed. Written by `train`
//! and `import`; read by `impasto styles`, the server's style list and `info`. Fields this
//! version does not know are kept, so reading and writing a record loses nothing.

use crate::loss::LossConfig;
use serde::{Deserialize, Serialize};

pub const PROVENANCE_KEY: &str = "impasto.provenance";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The program and command, e.g. `impasto 0.1.0 train`.
    pub made_by: String,
    /// Optimiser steps done (training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_done: Option<u64>,
    /// The training run's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainRecord>,
    /// The file a model was imported from, and its format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_format: Option<String>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// The settings of the run that trained a model (what readers use, typed; the rest kept).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossConfig>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl Provenance {
    /// From a model's metadata: `None` when it has none, an error when it does not parse.
    pub fn from_metadata(
        md: &std::collections::BTreeMap<String, String>,
    ) -> Option<Result<Self, crate::ModelError>> {
        md.get(PROVENANCE_KEY).map(|js| {
            serde_json::from_str(js).map_err(|e| crate::ModelError::Metadata {
                key: PROVENANCE_KEY.into(),
                msg: e.to_string(),
            })
        })
    }

    /// Into a model's metadata.
    pub fn to_metadata(&self, md: &mut std::collections::BTreeMap<String, String>) {
        md.insert(
            PROVENANCE_KEY.into(),
            serde_json::to_string(self).expect("provenance serialises"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_in_style_record_reads_typed_and_round_trips() {
        let js = r#"{"made_by":"impasto 0.1.0 train","steps_done":1600,"train":{"arch":"johnson","batch_size":4,"dataset_size":1872,"image_size":128,"loss":{"content_tap":1,"content_weight":1.0,"style_weight":5.0,"tv_weight":1e-6},"lr":0.001}}"#;
        let p: Provenance = serde_json::from_str(js).unwrap();
        let t = p.train.as_ref().unwrap();
        assert_eq!(
            (p.steps_done, t.image_size, t.dataset_size),
            (Some(1600), Some(128), Some(1872))
        );
        assert_eq!(t.loss.as_ref().unwrap().style_weight, 5.0);
        let back: serde_json::Value = serde_json::to_value(&p).unwrap();
        assert_eq!(back, serde_json::from_str::<serde_json::Value>(js).unwrap());
    }
}
