//! Robot domain: demonstration files, a policy that learns a known mapping, and the policy node
//! under good and bad clients.

use std::path::Path;
use std::time::Duration;

use blockdiff_core::sample::CommitPolicy;
use blockdiff_robot::client::{PolicyClient, Reply};
use blockdiff_robot::data::{Demos, Episode};
use blockdiff_robot::policy::{train, Observation, PolicyConfig, RobotPolicy, TokenizerKind};
use blockdiff_robot::server::{spawn, ServeConfig};
use blockdiff_robot::{wire, ActionChunk, RobotError};
use rand::{Rng, SeedableRng};
use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const H: usize = 4;
const D: usize = 2;
const OBS: usize = 3;

/// A known policy: the action moves a point towards the task's goal, proportionally, clipped;
/// the chunk continues the motion. Observation = (x, y, noise).
fn expert(x: f32, y: f32, task: usize, t: usize) -> [f32; 2] {
    let goal = if task == 0 { (0.5, 0.5) } else { (-0.5, 0.2) };
    let decay = 0.8f32.powi(t as i32);
    [
        ((goal.0 - x) * 2.0 * decay).clamp(-1.0, 1.0),
        ((goal.1 - y) * 2.0 * decay).clamp(-1.0, 1.0),
    ]
}

/// Synthetic demonstrations of [`expert`]: one step per "episode" row, chunks read ahead within
/// the episode, so the recorded action at row t is the expert's action for its observation.
fn synthetic_demos(episodes: usize, len: usize, seed: u64) -> Demos {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut obs = Vec::new();
    let mut actions = Vec::new();
    let mut eps = Vec::new();
    for e in 0..episodes {
        let task = e % 2;
        let start = obs.len() / OBS;
        let (mut x, mut y) = (
            rng.random_range(-1.0..1.0f32),
            rng.random_range(-1.0..1.0f32),
        );
        for _ in 0..len {
            obs.extend([x, y, rng.random_range(-0.1..0.1f32)]);
            let a = expert(x, y, task, 0);
            actions.extend(a);
            x += 0.2 * a[0];
            y += 0.2 * a[1];
        }
        eps.push(Episode {
            start,
            end: start + len,
            task,
            seed: e as i64,
            success: true,
        });
    }
    Demos {
        tasks: vec!["goal-a".into(), "goal-b".into()],
        obs_dim: OBS,
        act_dim: D,
        obs,
        actions,
        episodes: eps,
    }
}

fn tiny_config(steps: usize) -> PolicyConfig {
    PolicyConfig {
        horizon: H,
        bins: 64,
        d_model: 48,
        n_layers: 2,
        n_heads: 4,
        train_blocks: vec![1, 4, 8],
        steps,
        batch_size: 32,
        lr: 3e-3,
        block: 4,
        policy: CommitPolicy::TopK { k: 4 },
        ..PolicyConfig::default()
    }
}

fn trained(dir: &Path, steps: usize) -> RobotPolicy {
    let demos = synthetic_demos(60, 12, 1);
    train(&demos, &tiny_config(steps), Some(dir), false).unwrap();
    RobotPolicy::load(dir).unwrap()
}

#[test]
fn demos_file_round_trip_and_malformed_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let demos = synthetic_demos(4, 5, 2);
    let bytes = demos.to_bytes().unwrap();
    let path = dir.path().join("d.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(Demos::read(&path).unwrap(), demos);

    let expect_format = |bytes: &[u8], needle: &str| match Demos::from_bytes(bytes, &path) {
        Err(RobotError::Format { path: p, message }) => {
            assert_eq!(p, path);
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
        other => panic!("expected a format error naming {needle:?}, got {other:?}"),
    };
    expect_format(&bytes[..bytes.len() / 2], "safetensors");
    expect_format(b"garbage", "safetensors");
    let mut bad = demos.clone();
    bad.episodes[1].task = 7;
    expect_format(&bad.to_bytes().unwrap(), "episode_task");
    let mut bad = demos.clone();
    bad.episodes[3].end -= 1; // offsets no longer end at N
    expect_format(&bad.to_bytes().unwrap(), "episode_offsets");
    let mut bad = demos.clone();
    bad.obs[4] = f32::NAN;
    expect_format(&bad.to_bytes().unwrap(), "not finite");
    assert!(matches!(
        Demos::read(&dir.path().join("missing.safetensors")),
        Err(RobotError::Io { .. })
    ));
}

#[test]
fn policy_learns_a_known_mapping_and_cache_equals_recompute() {
    let dir = tempfile::tempdir().unwrap();
    let policy = trained(dir.path(), 1500);
    let s = policy.settings().clone();
    let obs = random_observations(64, 9);
    let sampler = policy.sampler(None, None);
    let (chunks, stats) = policy.act(&obs, &sampler).unwrap();
    eprintln!("batch of 64: {} model calls", stats.nfe);
    let (err, base) = expert_error(&obs, &chunks);
    eprintln!("policy error {err:.3} vs mean-prediction error {base:.3}");
    assert!(
        err < 0.35 * base,
        "policy error {err:.3} vs mean-prediction error {base:.3}"
    );
    // One request at a time, block decoding commits several tokens per model call.
    let single: usize = obs[..8]
        .iter()
        .map(|o| policy.act(std::slice::from_ref(o), &sampler).unwrap().1.nfe)
        .sum();
    assert!(
        single < 8 * H * D / 2,
        "{single} model calls for 8 chunks of {} tokens",
        H * D
    );

    // The KV cache (observation prefix encoded once) gives exactly the recompute result.
    let mut no_cache = sampler.clone();
    no_cache.use_cache = false;
    let (ref_chunks, _) = policy.act(&obs[..8], &no_cache).unwrap();
    assert_eq!(&chunks[..8], &ref_chunks[..]);
    // AR mode of the same weights works too.
    let (ar, ar_stats) = policy
        .act(&obs[..4], &policy.sampler(Some(1), None))
        .unwrap();
    assert_eq!(ar.len(), 4);
    assert_eq!(ar_stats.nfe, H * D);
    assert_eq!(s.seq_len, H * D);
    // Bad observations are typed errors, not panics.
    let bad = Observation {
        state: vec![f32::NAN, 0.0, 0.0],
        task: 0,
    };
    assert!(matches!(
        policy.act(&[bad], &sampler),
        Err(RobotError::Observation(_))
    ));
    let bad = Observation {
        state: vec![0.0; 3],
        task: 5,
    };
    assert!(matches!(
        policy.act(&[bad], &sampler),
        Err(RobotError::Observation(_))
    ));
}

#[test]
fn fast_tokenizer_policy_trains_and_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let demos = synthetic_demos(30, 10, 3);
    let cfg = PolicyConfig {
        tokenizer: TokenizerKind::Fast,
        fast_vocab: 120,
        train_blocks: vec![1, 4],
        ..tiny_config(40)
    };
    train(&demos, &cfg, Some(dir.path()), false).unwrap();
    let policy = RobotPolicy::load(dir.path()).unwrap();
    let obs = Observation {
        state: vec![0.1, 0.2, 0.0],
        task: 1,
    };
    let (chunks, _) = policy.act(&[obs], &policy.sampler(None, None)).unwrap();
    assert_eq!((chunks[0].horizon, chunks[0].dim), (H, D));
    assert!(chunks[0].values.iter().all(|v| v.is_finite()));
}

fn obs_frame(state: &[f32], prompt: &str) -> Vec<u8> {
    wire::encode_observation(state, prompt)
}

fn map(entries: Vec<(&str, Value)>) -> Vec<u8> {
    wire::write_frame(&Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    ))
}

fn raw_array(dtype: &str, shape: &[u64], data: Vec<u8>) -> Value {
    Value::Map(vec![
        (Value::Binary(b"__ndarray__".to_vec()), Value::Boolean(true)),
        (Value::Binary(b"data".to_vec()), Value::Binary(data)),
        (Value::Binary(b"dtype".to_vec()), Value::from(dtype)),
        (
            Value::Binary(b"shape".to_vec()),
            Value::Array(shape.iter().map(|&d| Value::from(d)).collect()),
        ),
    ])
}

#[test]
fn node_serves_batches_and_survives_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let policy = trained(dir.path(), 30);
    let handle = spawn(
        policy,
        "127.0.0.1:0",
        ServeConfig {
            max_frame_bytes: 4096,
            ..ServeConfig::default()
        },
    )
    .unwrap();
    let addr = handle.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        // Health check over plain HTTP on the same port.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

        let mut c = PolicyClient::connect(addr).await.unwrap();
        let Value::Map(meta) = &c.metadata else {
            panic!("metadata is not a map")
        };
        let get = |k: &str| {
            meta.iter()
                .find(|(kk, _)| kk.as_str() == Some(k))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("action_horizon").and_then(|v| v.as_u64()),
            Some(H as u64)
        );
        assert_eq!(get("action_dim").and_then(|v| v.as_u64()), Some(D as u64));

        let good = obs_frame(&[0.1, -0.3, 0.0], "goal-a");
        let check_good = |r: Reply| match r {
            Reply::Frame(f) => {
                let a = wire::decode_actions(&f).unwrap();
                assert_eq!(a.shape, vec![H, D]);
                assert_eq!(a.dtype, "<f4");
            }
            Reply::Error(e) => panic!("good request refused: {e}"),
        };
        check_good(c.send(Message::binary(good.clone())).await.unwrap());

        let f64_state: Vec<u8> = [0.1f64, 0.2, 0.3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bad_frames: Vec<(Message, &str)> = vec![
            (Message::binary(b"\xc1\xff garbage".to_vec()), "msgpack"),
            (
                Message::binary(map(vec![("prompt", Value::from("goal-a"))])),
                "state",
            ),
            (Message::binary(obs_frame(&[0.1, 0.2], "goal-a")), "shape"),
            (
                Message::binary(obs_frame(&[0.1, f32::NAN, 0.0], "goal-a")),
                "NaN",
            ),
            (
                Message::binary(obs_frame(&[0.1, f32::INFINITY, 0.0], "goal-a")),
                "NaN or infinite",
            ),
            (
                Message::binary(obs_frame(&[0.1, 0.2, 0.0], "no-such-task")),
                "unknown task",
            ),
            (
                Message::binary(map(vec![
                    ("state", raw_array("<u2", &[3], vec![0; 6])),
                    ("prompt", Value::from("goal-a")),
                ])),
                "dtype",
            ),
            (
                Message::binary(map(vec![
                    ("state", raw_array("<f4", &[3], vec![0; 5])),
                    ("prompt", Value::from("goal-a")),
                ])),
                "bytes",
            ),
            (
                Message::binary(map(vec![
                    ("state", raw_array("<f4", &[u64::MAX, 4], vec![0; 12])),
                    ("prompt", Value::from("goal-a")),
                ])),
                "overflow",
            ),
            (Message::binary(vec![0x92; 10_000]), "exceeds"),
            (Message::text("hello"), "binary"),
            (
                Message::binary(map(vec![
                    ("state", Value::Array(vec![Value::from("a")])),
                    ("prompt", Value::from("goal-a")),
                ])),
                "numbers",
            ),
            (Message::binary(vec![0x91; 64]), "msgpack"), // nested arrays beyond the depth limit
        ];
        for (msg, needle) in bad_frames {
            match c.send(msg).await.unwrap() {
                Reply::Error(e) => assert!(e.contains(needle), "error {e:?} lacks {needle:?}"),
                Reply::Frame(_) => panic!("bad frame ({needle}) was answered with actions"),
            }
            // The same connection keeps serving.
            check_good(c.send(Message::binary(good.clone())).await.unwrap());
        }
        // float64 state (numpy's default dtype) is accepted, as is a task index.
        let f64_frame = map(vec![
            ("state", raw_array("<f8", &[3], f64_state)),
            ("task", Value::from(1)),
        ]);
        check_good(c.send(Message::binary(f64_frame)).await.unwrap());

        // A frame beyond the websocket layer's limit (16× max_frame_bytes, at least 1 MiB):
        // that connection is told why and closed; the node keeps serving everyone else.
        let mut big = PolicyClient::connect(addr).await.unwrap();
        match big.send(Message::binary(vec![0u8; 3 << 20])).await {
            Ok(Reply::Error(e)) => assert!(e.contains("closing"), "{e}"),
            Ok(Reply::Frame(_)) => panic!("a 3 MiB frame was answered with actions"),
            Err(_) => {} // closed before the reason arrived
        }

        // Garbage instead of a websocket handshake: that connection is dropped, the node lives.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"\x00\x01\x02 not http\r\n\r\n").await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;

        // Concurrent clients: all answered, and at least one batch held several requests.
        let mut tasks = Vec::new();
        for i in 0..8 {
            tasks.push(tokio::spawn(async move {
                let mut c = PolicyClient::connect(addr).await.unwrap();
                let mut max_batch = 0.0f64;
                for j in 0..20 {
                    let r = c
                        .infer(&[0.01 * (i + j) as f32, 0.2, 0.0], "goal-b")
                        .await
                        .unwrap();
                    let Reply::Frame(f) = r else {
                        panic!("refused: {r:?}")
                    };
                    let Value::Map(m) = wire::read_frame(&f).unwrap() else {
                        panic!()
                    };
                    let timing = m
                        .iter()
                        .find(|(k, _)| k.as_str() == Some("server_timing"))
                        .unwrap()
                        .1
                        .clone();
                    let Value::Map(t) = timing else { panic!() };
                    let b = t
                        .iter()
                        .find(|(k, _)| k.as_str() == Some("batch"))
                        .unwrap()
                        .1
                        .as_f64()
                        .unwrap();
                    max_batch = max_batch.max(b);
                }
                max_batch
            }));
        }
        let mut biggest = 0.0f64;
        for t in tasks {
            biggest = biggest.max(t.await.unwrap());
        }
        assert!(biggest > 1.0, "8 concurrent clients never shared a batch");
        check_good(c.send(Message::binary(good)).await.unwrap());
    });
    handle.stop();
}

#[test]
fn deadline_passed_is_an_error_reply() {
    let dir = tempfile::tempdir().unwrap();
    let policy = trained(dir.path(), 5);
    // A zero deadline: every request is too late by the time the model would run it.
    let handle = spawn(
        policy,
        "127.0.0.1:0",
        ServeConfig {
            deadline_ms: 0,
            ..ServeConfig::default()
        },
    )
    .unwrap();
    let addr = handle.addr;
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let mut c = PolicyClient::connect(addr).await.unwrap();
            for _ in 0..3 {
                match c.infer(&[0.0, 0.0, 0.0], "goal-a").await.unwrap() {
                    Reply::Error(e) => assert!(e.contains("deadline"), "{e}"),
                    Reply::Frame(_) => panic!("a request past its deadline was run"),
                }
            }
        });
    handle.stop();
}

#[test]
fn difference_features_extend_the_condition_and_bad_ranges_are_config_errors() {
    use blockdiff_robot::policy::{prepare, DiffFeature};
    let demos = synthetic_demos(8, 12, 3);
    let cfg = PolicyConfig {
        diff_features: vec![DiffFeature {
            minuend: 0,
            subtrahend: 1,
            len: 1,
        }],
        ..tiny_config(1)
    };
    let (settings, train_set, _) = prepare(&demos, &cfg).unwrap();
    assert!(!train_set.is_empty());
    // Raw (x, y, noise), then x − y, then the task one-hot; normalised by statistics fitted on
    // the same augmented rows.
    let obs = Observation {
        state: vec![0.25, -0.5, 0.0],
        task: 1,
    };
    let v = settings.condition(&obs).unwrap();
    assert_eq!(v.len(), OBS + 1 + 2);
    let n = &settings.obs_norm;
    assert_eq!(n.mean.len(), OBS + 1);
    let expect = ((0.25 - -0.5) - n.mean[OBS]) / n.std[OBS];
    assert!((v[OBS] - expect).abs() < 1e-5, "{} vs {expect}", v[OBS]);
    assert_eq!(&v[OBS + 1..], &[0.0, 1.0]);

    for bad in [
        DiffFeature {
            minuend: 2,
            subtrahend: 0,
            len: 2,
        },
        DiffFeature {
            minuend: 0,
            subtrahend: 1,
            len: 0,
        },
    ] {
        let cfg = PolicyConfig {
            diff_features: vec![bad],
            ..tiny_config(1)
        };
        expect_config_error(prepare(&demos, &cfg).map(|_| ()), "difference feature");
    }
}

/// Averaged decoding keeps each observation's samples together: at temperature 0 every sample
/// is the greedy chunk, so the average must equal greedy decoding observation by observation;
/// at temperature 1 the average of 8 samples differs from greedy somewhere. Bad settings are
/// config errors.
#[test]
fn averaged_samples_group_by_observation() {
    let dir = tempfile::tempdir().unwrap();
    let greedy = trained(dir.path(), 60);
    let obs: Vec<Observation> = (0..3)
        .map(|i| Observation {
            state: vec![0.3 * i as f32 - 0.4, 0.5 - 0.2 * i as f32, 0.0],
            task: i % 2,
        })
        .collect();
    let sampler = greedy.sampler(None, None);
    let (one, _) = greedy.act(&obs, &sampler).unwrap();
    let averaged = RobotPolicy::load(dir.path())
        .unwrap()
        .with_decoding(Some(4), Some(0.0))
        .unwrap();
    let (avg, stats) = averaged.act(&obs, &averaged.sampler(None, None)).unwrap();
    assert_eq!(stats.batch, 12, "4 samples for each of 3 observations");
    assert_eq!(avg.len(), 3);
    for (a, b) in avg.iter().zip(&one) {
        for (x, y) in a.values.iter().zip(&b.values) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }
    let warm = RobotPolicy::load(dir.path())
        .unwrap()
        .with_decoding(Some(8), Some(1.0))
        .unwrap();
    let (mean, _) = warm.act(&obs, &warm.sampler(None, None)).unwrap();
    assert!(mean.iter().zip(&one).any(|(a, b)| a
        .values
        .iter()
        .zip(&b.values)
        .any(|(x, y)| (x - y).abs() > 1e-4)));
    for (k, t) in [(Some(0), None), (None, Some(f32::NAN)), (None, Some(-1.0))] {
        assert!(matches!(
            RobotPolicy::load(dir.path()).unwrap().with_decoding(k, t),
            Err(RobotError::Config(_))
        ));
    }
}

/// `result` must be a config error whose message contains `needle`.
fn expect_config_error(result: Result<(), RobotError>, needle: &str) {
    match result {
        Err(RobotError::Config(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected a config error naming {needle:?}, got {other:?}"),
    }
}

/// `n` observations at random points, alternating tasks.
fn random_observations(n: usize, seed: u64) -> Vec<Observation> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| Observation {
            state: vec![
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
                0.0,
            ],
            task: i % 2,
        })
        .collect()
}

/// Summed first-action error of `chunks` against [`expert`], and the same error for
/// predicting the demonstrations' mean action.
fn expert_error(obs: &[Observation], chunks: &[ActionChunk]) -> (f32, f32) {
    let demos = synthetic_demos(60, 12, 1);
    let n = demos.actions.len() / D;
    let mean: Vec<f32> = (0..D)
        .map(|d| (0..n).map(|i| demos.actions[i * D + d]).sum::<f32>() / n as f32)
        .collect();
    let (mut err, mut base) = (0.0, 0.0);
    for (o, c) in obs.iter().zip(chunks) {
        let want = expert(o.state[0], o.state[1], o.task, 0);
        for d in 0..D {
            err += (c.action(0)[d] - want[d]).abs();
            base += (mean[d] - want[d]).abs();
        }
    }
    (err, base)
}

/// [`expert_error`] of a policy's greedy chunks on fixed observations.
fn first_action_error(policy: &RobotPolicy) -> (f32, f32) {
    let obs = random_observations(64, 11);
    let (chunks, _) = policy.act(&obs, &policy.sampler(None, None)).unwrap();
    expert_error(&obs, &chunks)
}

/// Value features: the table holds each bin's features (zero rows for specials), survives the
/// checkpoint (the loaded policy acts exactly like the trained one), and the policy learns the
/// known mapping; with FAST tokens they are a config error.
#[test]
fn value_features_are_saved_and_learn_the_mapping() {
    use blockdiff_robot::policy::{prepare, value_features, ActionTokenizer, VALUE_FEATURES};
    let demos = synthetic_demos(60, 12, 1);
    let cfg = PolicyConfig {
        value_features: true,
        ..tiny_config(500)
    };
    let (settings, _, _) = prepare(&demos, &cfg).unwrap();
    let table = settings.value_feature_table().unwrap();
    let ActionTokenizer::Bins(bins) = &settings.tokenizer else {
        panic!("bins tokenizer expected")
    };
    let vocab = settings.tokenizer.vocab_size();
    assert_eq!(table.len(), vocab * VALUE_FEATURES);
    let row = |id: usize| &table[id * VALUE_FEATURES..(id + 1) * VALUE_FEATURES];
    let first = blockdiff_core::tokenizer::NUM_CORE_SPECIALS as usize;
    assert!((0..first).all(|id| row(id).iter().all(|&v| v == 0.0)));
    for bin in [0, 17, 63] {
        assert_eq!(row(first + bin), &value_features(bins.centre(bin))[..]);
    }
    assert!(table.iter().all(|v| v.abs() <= 1.0 + 1e-6));

    let dir = tempfile::tempdir().unwrap();
    let (trained_policy, _) = train(&demos, &cfg, Some(dir.path()), false).unwrap();
    let loaded = RobotPolicy::load(dir.path()).unwrap();
    let (err, base) = first_action_error(&loaded);
    // 500 steps (a third of the plain test's budget): learnt, not yet as precise.
    assert!(
        err < 0.5 * base,
        "policy error {err:.3} vs mean-prediction error {base:.3}"
    );
    assert_eq!(first_action_error(&trained_policy), (err, base));

    let fast = PolicyConfig {
        tokenizer: TokenizerKind::Fast,
        fast_vocab: 120,
        train_blocks: vec![1, 4],
        ..cfg
    };
    expect_config_error(
        train(&demos, &fast, None, false).map(|_| ()),
        "value features",
    );
}

/// `obs_keep` selects observation values before normalisation (difference features still read
/// the whole raw observation); empty or out-of-range selections are config errors.
#[test]
fn kept_observation_ranges_select_the_condition_and_bad_ranges_are_config_errors() {
    use blockdiff_robot::policy::{prepare, DiffFeature};
    let demos = synthetic_demos(8, 12, 3);
    let cfg = PolicyConfig {
        obs_keep: vec![[0, 1], [2, 3]],
        diff_features: vec![DiffFeature {
            minuend: 0,
            subtrahend: 1,
            len: 1,
        }],
        ..tiny_config(1)
    };
    let (settings, _, _) = prepare(&demos, &cfg).unwrap();
    let obs = Observation {
        state: vec![0.25, -0.5, 0.07],
        task: 0,
    };
    let v = settings.condition(&obs).unwrap();
    // x, noise, x − y (y itself is dropped), then the task one-hot.
    assert_eq!(v.len(), 3 + 2);
    let n = &settings.obs_norm;
    assert_eq!(n.mean.len(), 3);
    let raw = [0.25f32, 0.07, 0.25 - -0.5];
    for (i, r) in raw.iter().enumerate() {
        let expect = (r - n.mean[i]) / n.std[i];
        assert!(
            (v[i] - expect).abs() < 1e-5,
            "value {i}: {} vs {expect}",
            v[i]
        );
    }
    assert_eq!(&v[3..], &[1.0, 0.0]);
    for bad in [[1, 1], [2, 4]] {
        let cfg = PolicyConfig {
            obs_keep: vec![bad],
            ..tiny_config(1)
        };
        expect_config_error(prepare(&demos, &cfg).map(|_| ()), "observation range");
    }
}

/// A per-task policy set: each member learns its own task's demonstrations alone, the set
/// routes every request of a mixed batch to its task's member (the set's chunks equal each
/// member's own for the same observations, in request order), the node serves the union of the
/// tasks through the wire, and broken manifests are config errors naming the problem.
#[test]
fn per_task_policy_set_routes_requests_and_rejects_bad_manifests() {
    use blockdiff_robot::set::{train_per_task, PolicySet, SetManifest, SET_FILE, SET_FORMAT};
    let demos = synthetic_demos(60, 12, 1);
    let one = demos.only_task(1).unwrap();
    assert_eq!(one.tasks, vec!["goal-b".to_string()]);
    assert_eq!(one.episodes.len(), 30);
    assert!(one.episodes.iter().all(|e| e.task == 0));
    let src = demos
        .episodes
        .iter()
        .filter(|e| e.task == 1)
        .nth(3)
        .unwrap();
    let dst = &one.episodes[3];
    assert_eq!(dst.end - dst.start, src.end - src.start);
    assert_eq!(one.obs_row(dst.end - 1), demos.obs_row(src.end - 1));
    assert_eq!(one.chunk(dst, dst.start, H), demos.chunk(src, src.start, H));
    assert!(matches!(demos.only_task(2), Err(RobotError::Config(_))));

    let dir = tempfile::tempdir().unwrap();
    let (set, reports) = train_per_task(&demos, &tiny_config(400), dir.path(), false).unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(set.settings().tasks, demos.tasks);
    let loaded = PolicySet::load(dir.path()).unwrap();
    assert_eq!(loaded.members().len(), 2);
    assert_eq!(loaded.settings().tasks, demos.tasks);
    let obs = random_observations(16, 5);
    let (chunks, stats) = loaded.act(&obs, &loaded.samplers(None, None)).unwrap();
    assert_eq!((chunks.len(), stats.batch), (16, 16));
    for (m, member) in loaded.members().iter().enumerate() {
        assert_eq!(member.settings().tasks, vec![demos.tasks[m].clone()]);
        let (index, local): (Vec<usize>, Vec<Observation>) = obs
            .iter()
            .enumerate()
            .filter(|(_, o)| o.task == m)
            .map(|(i, o)| {
                (
                    i,
                    Observation {
                        state: o.state.clone(),
                        task: 0,
                    },
                )
            })
            .unzip();
        let (own, _) = member.act(&local, &member.sampler(None, None)).unwrap();
        for (i, c) in index.into_iter().zip(own) {
            assert_eq!(chunks[i], c, "request {i} (task {m})");
        }
    }
    let bad_task = [Observation {
        state: vec![0.0; OBS],
        task: 2,
    }];
    assert!(matches!(
        loaded.act(&bad_task, &loaded.samplers(None, None)),
        Err(RobotError::Observation(_))
    ));

    let handle = spawn(loaded, "127.0.0.1:0", ServeConfig::default()).unwrap();
    let addr = handle.addr;
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let mut c = PolicyClient::connect(addr).await.unwrap();
            for task in ["goal-a", "goal-b"] {
                match c.infer(&[0.1, -0.2, 0.0], task).await.unwrap() {
                    Reply::Frame(_) => {}
                    Reply::Error(e) => panic!("{task} refused: {e}"),
                }
            }
            match c.infer(&[0.1, -0.2, 0.0], "goal-c").await.unwrap() {
                Reply::Error(e) => assert!(e.contains("unknown task"), "{e}"),
                Reply::Frame(_) => panic!("an unknown task was answered"),
            }
        });
    handle.stop();

    let manifest = dir.path().join(SET_FILE);
    let expect_set_error = |members: &[&str], format: &str, needle: &str| {
        let m = SetManifest {
            format: format.into(),
            members: members.iter().map(|s| s.to_string()).collect(),
        };
        std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
        expect_config_error(PolicySet::load(dir.path()).map(|_| ()), needle);
    };
    expect_set_error(&["goal-a", "goal-a"], SET_FORMAT, "two members");
    expect_set_error(&["goal-a", "../goal-b"], SET_FORMAT, "relative path");
    expect_set_error(&["goal-a", "missing"], SET_FORMAT, "\"missing\"");
    expect_set_error(&[], SET_FORMAT, "at least one member");
    expect_set_error(&["goal-a"], "something-else/1", "format");
    std::fs::write(&manifest, b"{not json").unwrap();
    assert!(PolicySet::load(dir.path()).is_err());
}
