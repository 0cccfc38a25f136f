//! Conditioning: continuous prefix vectors and/or a token prompt.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// What a sequence is conditioned on. Continuous vectors (robot observation, OD features, music
/// style) are encoded by the model's condition MLP into `cond_len` prefix positions; the token
/// prompt is clean context placed before the generated tokens. Both are dropped together with
/// the train config's `cond_drop_prob` so classifier-free guidance has an unconditional model.
pub trait Condition {
    /// `cond_len × cond_dim` values, row-major, or `None`.
    fn vectors(&self) -> Option<&[f32]> {
        None
    }
    /// Prompt token ids (clean, never noised, no loss).
    fn prompt(&self) -> &[u32] {
        &[]
    }
    /// Per-request token features, `vocab × request_feature_dim` row-major, or `None`.
    fn token_features(&self) -> Option<Arc<Vec<f32>>> {
        None
    }
}

/// A request's token-feature table (see [`Condition::token_features`]), given outright or
/// computed when a batch needs it. Lazy tables keep a training set's memory to its examples:
/// on a large road network one `[vocab, k]` table per trip would not fit, while the domain
/// can rebuild (and memoise, bounded) the few a batch reads.
#[derive(Clone)]
pub struct TokenFeatures(Arc<dyn Fn() -> Arc<Vec<f32>> + Send + Sync>);

impl TokenFeatures {
    /// A fixed table.
    pub fn table(values: Vec<f32>) -> Self {
        Self::shared(Arc::new(values))
    }

    /// A fixed table shared with other requests.
    pub fn shared(values: Arc<Vec<f32>>) -> Self {
        Self(Arc::new(move || values.clone()))
    }

    /// A table computed by `f` each time it is read.
    pub fn lazy(f: impl Fn() -> Arc<Vec<f32>> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The table.
    pub fn get(&self) -> Arc<Vec<f32>> {
        (self.0)()
    }
}

impl std::fmt::Debug for TokenFeatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenFeatures({} values)", self.get().len())
    }
}

impl PartialEq for TokenFeatures {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// Checks one request's token-feature table against a model: it must have
/// `vocab × request_feature_dim` finite values, and the model must take them. The message
/// says what is wrong; callers add which request or example.
pub fn check_request_features(
    table: &[f32],
    cfg: &crate::model::BlockDiffusionConfig,
) -> Result<(), String> {
    let k = cfg.request_feature_dim;
    if k == 0 {
        return Err("request token features given to a model without them".into());
    }
    let width = cfg.vocab_size * k;
    if table.len() != width {
        return Err(format!(
            "request token features have {} values, the model expects vocab × {k} = {width}",
            table.len()
        ));
    }
    if table.iter().any(|x| !x.is_finite()) {
        return Err("request token features contain NaN or infinity".into());
    }
    Ok(())
}

/// A plain condition value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Conditioning {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Continuous condition vectors, `cond_len × cond_dim` row-major.
    pub vectors: Option<Vec<f32>>,
    /// Per-request token features (`vocab × request_feature_dim`, row-major), shared between
    /// requests that ask the same thing (e.g. trips to one destination). Not serialised: the
    /// domain recomputes it from the request.
    #[serde(skip)]
    pub token_features: Option<TokenFeatures>,
}

impl Condition for Conditioning {
    fn vectors(&self) -> Option<&[f32]> {
        self.vectors.as_deref()
    }
    fn prompt(&self) -> &[u32] {
        &self.prompt
    }
    fn token_features(&self) -> Option<Arc<Vec<f32>>> {
        self.token_features.as_ref().map(TokenFeatures::get)
    }
}

/// One training sequence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Target token ids (the trainer pads to the sequence length with `EOS`, `PAD`...).
    pub tokens: Vec<u32>,
    /// What the sequence is conditioned on.
    pub condition: Conditioning,
}

impl Example {
    /// An unconditioned example.
    pub fn tokens(tokens: Vec<u32>) -> Self {
        Self {
            tokens,
            condition: Conditioning::default(),
        }
    }
}
