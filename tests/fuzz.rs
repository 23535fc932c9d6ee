//! Request fuzzing against a real index: thousands of generated requests (random bytes,
//! mangled and hostile JSON, real credentials with hostile values, broken query strings) to
//! every endpoint. Nothing may panic the server or earn a 5xx, and the index must still
//! answer and agree with its shadow afterwards. (Op application is fuzzed in
//! `index::state`'s unit tests: random op sequences keep every invariant.)

mod common;

use common::*;
use serde_json::{json, Value};

/// xorshift64: the same requests on every run.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// A string the index must handle: ordinary, hostile, huge or odd.
    fn text(&mut self) -> Value {
        let long = "n".repeat(5000);
        let choices: [&str; 16] = [
            "song.mp3",
            "..",
            ".",
            "a/b",
            "/etc/passwd",
            "a\\b",
            "nul\u{0}byte",
            "",
            " ",
            "\u{202e}gpj.exe",
            "日本語.txt",
            "%2e%2e",
            "CON",
            "line\nbreak",
            &long,
            "0123456789abcdef",
        ];
        Value::from(*self.pick(&choices))
    }

    /// A JSON value of any type, for fields that expect something else.
    fn value(&mut self) -> Value {
        match self.below(9) {
            0 => Value::Null,
            1 => json!(true),
            2 => json!(-1),
            3 => json!(u64::MAX),
            4 => json!(1.5e300),
            5 => json!([]),
            6 => json!({}),
            7 => json!(["x", 1]),
            _ => self.text(),
        }
    }
}

fn sha(n: u64) -> String {
    sha256_hex(&n.to_le_bytes())
}

/// A request body for `path`: usually almost right, with one part mangled.
fn body(g: &mut Gen, path: &str, id: &Id, lease_id: &str) -> Vec<u8> {
    let file = |g: &mut Gen| {
        let mut f = json!({"name": g.text(), "version": 1 + g.below(3), "size": g.below(100),
                           "sha256": sha(g.next())});
        if g.below(3) == 0 {
            let key = *g.pick(&["name", "version", "size", "sha256"]);
            f[key] = g.value();
        }
        f
    };
    let mut v = match path {
        "/register" => json!({"addr": g.pick(&["127.0.0.1:9", "h:1", "nohost", "[::1]:5"]),
                              "files": (0..g.below(4)).map(|_| file(g)).collect::<Vec<_>>()}),
        "/heartbeat" => json!({"peer_id": id.peer_id, "token": id.token,
                               "added": (0..g.below(3)).map(|_| file(g)).collect::<Vec<_>>(),
                               "removed": [g.text()],
                               "failed": [{"task_id": g.text(), "reason": "fuzz"}],
                               "wait_ms": 0}),
        "/announce" => json!({"peer_id": id.peer_id, "token": id.token, "file": g.text(),
                              "version": g.below(4), "size": 1, "sha256": sha(g.next()),
                              "lease_id": lease_id}),
        "/lease" => json!({"peer_id": id.peer_id, "token": id.token, "file": g.text()}),
        "/lease/renew" | "/lease/release" => {
            json!({"peer_id": id.peer_id, "token": id.token, "lease_id": lease_id})
        }
        _ => json!({"peer_id": id.peer_id, "token": id.token}),
    };
    match g.below(6) {
        // Random bytes.
        0 => return g.bytes(300),
        // A field of the wrong type, or missing, or someone else's token.
        1 => {
            let keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            let key = g.pick(&keys).clone();
            v[key] = g.value();
        }
        2 => {
            let keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            let key = g.pick(&keys).clone();
            v.as_object_mut().unwrap().remove(&key);
        }
        3 => v["token"] = json!("not-the-token"),
        // Cut short.
        4 => {
            let mut bytes = v.to_string().into_bytes();
            let cut = g.below(bytes.len().max(1));
            bytes.truncate(cut);
            return bytes;
        }
        _ => {}
    }
    v.to_string().into_bytes()
}

/// A query string for the GET endpoints: sometimes valid, sometimes broken escapes.
fn query(g: &mut Gen) -> String {
    let value = match g.below(5) {
        0 => "%".to_string(),
        1 => "%zz%00%ff".to_string(),
        2 => "song".to_string(),
        3 => g
            .bytes(40)
            .iter()
            .map(|b| format!("%{b:02x}"))
            .collect::<String>(),
        _ => "x".repeat(g.below(3000)),
    };
    let key = *g.pick(&["q", "name", "limit", "digest", "", "q=&q"]);
    format!(
        "{key}={value}&limit={}",
        g.pick(&["5", "-1", "99999999999999999999", "x"])
    )
}

#[test]
fn generated_requests_never_earn_a_5xx_or_stop_the_index() {
    let data = tempfile::tempdir().unwrap();
    let primary_flags = [
        "--data-dir",
        data.path().to_str().unwrap(),
        "--replication-factor",
        "2",
        "--max-body",
        "65536",
    ];
    let (primary, _shadow, Addrs { purl, surl, .. }) = start_pair(&primary_flags, &[]);
    let url = &primary.url;
    let id = identity(url, 9501, vec![file_entry("song.mp3", 1, "s")]);
    let _other = identity(url, 9502, vec![file_entry("other.txt", 1, "o")]);
    let granted = lease(url, &id, "song.mp3").json();
    let lease_id = granted["lease_id"].as_str().unwrap_or("00").to_string();

    let mut g = Gen(0x2545_f491_4f6c_dd1d);
    let paths: Vec<&str> = nap::protocol::INDEX_PATHS.to_vec();
    let mut statuses = std::collections::BTreeMap::new();
    for n in 0..3_000 {
        let path = *g.pick(&paths);
        let method = if g.below(8) == 0 {
            if g.below(2) == 0 {
                "GET"
            } else {
                "POST"
            }
        } else if matches!(
            path,
            "/search" | "/file" | "/status" | "/health" | "/metrics" | "/snapshot"
        ) {
            "GET"
        } else {
            "POST"
        };
        let target = if method == "GET" {
            format!("{url}{path}?{}", query(&mut g))
        } else {
            format!("{url}{path}")
        };
        let payload = body(&mut g, path, &id, &lease_id);
        let (answer, _) = call(method, &target, &payload);
        assert!(
            answer.status < 500,
            "request {n}: {method} {target} with {:?} got {}: {}",
            String::from_utf8_lossy(&payload),
            answer.status,
            answer.body
        );
        if answer.status != 200 && path != "/metrics" {
            let error: Value = serde_json::from_str(&answer.body)
                .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {}", answer.body));
            assert!(
                error["error"].is_string(),
                "{method} {path}: {}",
                answer.body
            );
        }
        *statuses.entry(answer.status).or_insert(0) += 1;
    }
    // Many were refused, some went through: the generator reached past the parsing.
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > 300,
        "{statuses:?}"
    );
    assert!(
        statuses.get(&400).copied().unwrap_or(0) > 300,
        "{statuses:?}"
    );

    // Still serving, and the shadow still follows with the same state.
    assert_eq!(get(&format!("{url}/health")).status, 200);
    poll_until("the shadow holds the primary's state", || {
        let p = get(&format!("{purl}/status?digest=1")).json();
        let s = get(&format!("{surl}/status?digest=1")).json();
        (p["seq"] == s["seq"] && p["digest"] == s["digest"]).then_some(())
    });
}
