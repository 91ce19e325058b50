//! Decodes the Kubernetes protobuf envelope (`application/vnd.kubernetes.protobuf`) of the built-in
//! kinds kubectl's typed clients send: `kubectl create secret`, `create configmap` and `create
//! namespace`. client-go does not fall back to JSON on a 415 for protobuf (only for CBOR), so the
//! server decodes these few messages (field numbers from k8s.io/api `generated.proto`) into the
//! same JSON the store takes. Other kinds get a 415 naming the kind. Pure.

use serde_json::{Map, Value, json};

use super::error::ApiError;

const MAGIC: &[u8] = b"k8s\0";

fn bad(msg: &str) -> ApiError {
    ApiError::BadRequest(format!("the body of the request could not be decoded as protobuf: {msg}"))
}

/// One field of a protobuf message: its number and either a varint or a length-delimited value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, ApiError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or_else(|| bad("truncated varint"))?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad("varint too long"))
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, ApiError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (num, wire) = (key >> 3, key & 7);
        let f = match wire {
            0 => Field::Varint(varint(buf, &mut pos)?),
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|_| bad("length"))?;
                let end = pos.checked_add(len).filter(|e| *e <= buf.len()).ok_or_else(|| bad("truncated field"))?;
                let b = &buf[pos..end];
                pos = end;
                Field::Bytes(b)
            }
            1 => {
                pos += 8;
                Field::Varint(0)
            }
            5 => {
                pos += 4;
                Field::Varint(0)
            }
            w => return Err(bad(&format!("unsupported wire type {w}"))),
        };
        if pos > buf.len() {
            return Err(bad("truncated field"));
        }
        out.push((num, f));
    }
    Ok(out)
}

fn string(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("string is not UTF-8"))
}

/// A `map<string, V>` entry (key = 1, value = 2).
fn entry(b: &[u8]) -> Result<(String, &[u8]), ApiError> {
    let mut k = String::new();
    let mut v: &[u8] = &[];
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => k = string(x)?,
            (2, Field::Bytes(x)) => v = x,
            _ => {}
        }
    }
    Ok((k, v))
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn insert_map(obj: &mut Map<String, Value>, key: &str, k: String, v: Value) {
    obj.entry(key).or_insert_with(|| json!({}))[k] = v;
}

/// ObjectMeta: the fields a client sets on create or replace.
fn object_meta(b: &[u8]) -> Result<Value, ApiError> {
    let mut m = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => _ = m.insert("name".into(), json!(string(x)?)),
            (2, Field::Bytes(x)) => _ = m.insert("generateName".into(), json!(string(x)?)),
            (3, Field::Bytes(x)) => _ = m.insert("namespace".into(), json!(string(x)?)),
            (5, Field::Bytes(x)) => _ = m.insert("uid".into(), json!(string(x)?)),
            (6, Field::Bytes(x)) => _ = m.insert("resourceVersion".into(), json!(string(x)?)),
            (11, Field::Bytes(x)) => {
                let (k, v) = entry(x)?;
                insert_map(&mut m, "labels", k, json!(string(v)?));
            }
            (12, Field::Bytes(x)) => {
                let (k, v) = entry(x)?;
                insert_map(&mut m, "annotations", k, json!(string(v)?));
            }
            (14, Field::Bytes(x)) => {
                let f = json!(string(x)?);
                if let Some(a) = m.entry("finalizers").or_insert_with(|| json!([])).as_array_mut() {
                    a.push(f);
                }
            }
            (13 | 17, _) => return Err(bad("ownerReferences and managedFields are not supported in protobuf bodies; send JSON")),
            _ => {}
        }
    }
    Ok(Value::Object(m))
}

/// The kind's own fields: (field number, JSON name, how the value is read).
#[derive(Clone, Copy)]
enum Kind {
    StringMap,
    BytesMap,
    Str,
    Bool,
    NamespaceSpec,
}

fn layout(kind: &str) -> Option<&'static [(u64, &'static str, Kind)]> {
    match kind {
        "Secret" => {
            Some(&[(2, "data", Kind::BytesMap), (3, "type", Kind::Str), (4, "stringData", Kind::StringMap), (5, "immutable", Kind::Bool)])
        }
        "ConfigMap" => Some(&[(2, "data", Kind::StringMap), (3, "binaryData", Kind::BytesMap), (4, "immutable", Kind::Bool)]),
        "Namespace" => Some(&[(2, "spec", Kind::NamespaceSpec)]),
        _ => None,
    }
}

/// Decodes a protobuf request body into the object's JSON form.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(|| bad("missing the k8s protobuf envelope"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(rest)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (n, f) in fields(tm)? {
                    match (n, f) {
                        (1, Field::Bytes(x)) => api_version = string(x)?,
                        (2, Field::Bytes(x)) => kind = string(x)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = x,
            _ => {}
        }
    }
    let layout = layout(&kind).filter(|_| api_version == "v1").ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!(
            "the Warren local control plane decodes protobuf only for v1 Secret, ConfigMap and Namespace, not {api_version} {kind}; send application/json"
        ))
    })?;
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    for (n, f) in fields(raw)? {
        if n == 1 {
            if let Field::Bytes(x) = f {
                obj.insert("metadata".into(), object_meta(x)?);
            }
            continue;
        }
        let Some((_, name, how)) = layout.iter().find(|(num, _, _)| *num == n) else { continue };
        match (how, f) {
            (Kind::StringMap, Field::Bytes(x)) => {
                let (k, v) = entry(x)?;
                insert_map(&mut obj, name, k, json!(string(v)?));
            }
            (Kind::BytesMap, Field::Bytes(x)) => {
                let (k, v) = entry(x)?;
                insert_map(&mut obj, name, k, json!(base64(v)));
            }
            (Kind::Str, Field::Bytes(x)) => _ = obj.insert((*name).into(), json!(string(x)?)),
            (Kind::Bool, Field::Varint(v)) => _ = obj.insert((*name).into(), json!(v != 0)),
            (Kind::NamespaceSpec, Field::Bytes(x)) => {
                let mut finalizers = Vec::new();
                for (n, f) in fields(x)? {
                    if let (1, Field::Bytes(s)) = (n, f) {
                        finalizers.push(json!(string(s)?));
                    }
                }
                obj.insert((*name).into(), json!({"finalizers": finalizers}));
            }
            _ => return Err(bad(&format!("unexpected wire type for {kind}.{name}"))),
        }
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(num: u64, b: &[u8]) -> Vec<u8> {
        let mut out = vec![((num << 3) | 2) as u8, b.len() as u8];
        out.extend_from_slice(b);
        out
    }

    fn kv(num: u64, k: &str, v: &[u8]) -> Vec<u8> {
        ld(num, &[ld(1, k.as_bytes()), ld(2, v)].concat())
    }

    #[test]
    fn decodes_a_secret_like_kubectl_create_secret_sends_it() {
        let meta = [ld(1, b"x"), ld(3, b"default"), kv(11, "app", b"web")].concat();
        let secret = [ld(1, &meta), kv(2, "a", b"b\xff"), ld(3, b"Opaque")].concat();
        let envelope = [ld(1, &[ld(1, b"v1"), ld(2, b"Secret")].concat()), ld(2, &secret)].concat();
        let body = [MAGIC, &envelope].concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": {"a": "Yv8="},
                   "metadata": {"name": "x", "namespace": "default", "labels": {"app": "web"}}})
        );
    }

    #[test]
    fn other_kinds_are_415_and_garbage_is_400() {
        let envelope = ld(1, &[ld(1, b"apps/v1"), ld(2, b"Deployment")].concat());
        assert_eq!(decode(&[MAGIC, &envelope].concat()).unwrap_err().code(), 415);
        assert_eq!(decode(b"{}").unwrap_err().code(), 400);
        assert_eq!(decode(&[MAGIC, &[0x0a, 0x05, 0x01][..]].concat()).unwrap_err().code(), 400);
        assert_eq!(base64(b"bob"), "Ym9i");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
