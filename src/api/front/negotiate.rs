//! Content negotiation: request bodies (JSON, YAML, patch types) and response formats.

use crate::vocab::status::ApiError;
use serde_json::Value;

/// What a response is rendered as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    /// `meta.k8s.io/v1` Table.
    Table,
    /// `meta.k8s.io/v1` PartialObjectMetadata (a list of them for lists), JSON or YAML
    /// (`yaml`): the objects' metadata only.
    Metadata { yaml: bool },
}

/// What a request asks for: one object (get, and each event of a watch) or a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Object,
    List,
}

/// Picks a response format from `Accept` for a single object. Protobuf alone gets 406 so
/// clients fall back.
pub fn response_format(accept: Option<&str>) -> Result<Format, ApiError> {
    response_format_for(accept, Shape::Object)
}

/// Picks a response format from `Accept` for a request of `shape`: the first entry that
/// can be served, as upstream negotiates (`as=PartialObjectMetadataList` fits lists only,
/// `as=PartialObjectMetadata` single objects and watches).
pub fn response_format_for(accept: Option<&str>, shape: Shape) -> Result<Format, ApiError> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else { return Ok(Format::Json) };
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let params: Vec<(String, String)> = parts
            .filter_map(|p| p.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
            .collect();
        let param = |k: &str| params.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.as_str());
        let meta_v1 = param("g") == Some("meta.k8s.io") && param("v") == Some("v1");
        let yaml = match media.as_str() {
            "application/json" | "*/*" | "application/*" => false,
            "application/yaml" => true,
            _ => continue,
        };
        match (param("as"), shape) {
            (None, _) => return Ok(if yaml { Format::Yaml } else { Format::Json }),
            (Some("Table"), _) if meta_v1 && !yaml => return Ok(Format::Table),
            (Some("PartialObjectMetadata"), Shape::Object) | (Some("PartialObjectMetadataList"), Shape::List) if meta_v1 => return Ok(Format::Metadata { yaml }),
            // Other conversions (v1beta1, a list type for an object, ...) are not served: next.
            _ => continue,
        }
    }
    Err(ApiError::not_acceptable(accept))
}

/// Kinds of request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    Json,
    Yaml,
    JsonPatch,
    MergePatch,
    StrategicMergePatch,
    ApplyPatch,
    Protobuf,
}

/// Classifies a `Content-Type` header.
pub fn body_type(content_type: Option<&str>) -> Result<BodyType, ApiError> {
    let ct = content_type.unwrap_or("application/json");
    let media = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    Ok(match media.as_str() {
        "application/json" | "" => BodyType::Json,
        "application/yaml" => BodyType::Yaml,
        "application/json-patch+json" => BodyType::JsonPatch,
        "application/merge-patch+json" => BodyType::MergePatch,
        "application/strategic-merge-patch+json" => BodyType::StrategicMergePatch,
        "application/apply-patch+yaml" => BodyType::ApplyPatch,
        "application/vnd.kubernetes.protobuf" => BodyType::Protobuf,
        _ => return Err(ApiError::unsupported_media_type(ct)),
    })
}

/// Decodes a JSON or YAML document into a value; errors are `BadRequest`, never panics.
pub fn decode(body: &[u8], yaml: bool) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty; an object was expected"));
    }
    if yaml {
        serde_yaml::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| {
            ApiError::bad_request(format!("error decoding JSON: {e}"))
        })
    }
}

/// Decodes a body that must be one object, in any of the object body types.
pub fn decode_object(body: &[u8], bt: BodyType) -> Result<Value, ApiError> {
    let v = match bt {
        BodyType::Protobuf => crate::api::protobuf::decode(body)?,
        BodyType::Json | BodyType::Yaml => decode(body, bt == BodyType::Yaml)?,
        _ => return Err(ApiError::unsupported_media_type("a patch media type where an object was expected")),
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the request body must be an object"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept() {
        assert_eq!(response_format(None).unwrap(), Format::Json);
        assert_eq!(
            response_format(Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")).unwrap(),
            Format::Table
        );
        assert_eq!(response_format(Some("application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json")).unwrap(), Format::Json);
        assert_eq!(response_format(Some("application/vnd.kubernetes.protobuf, */*")).unwrap(), Format::Json);
        assert_eq!(response_format(Some("application/vnd.kubernetes.protobuf")).unwrap_err().code, 406);
    }

    #[test]
    fn partial_object_metadata_fits_its_shape_only() {
        let list = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
        assert_eq!(response_format_for(Some(list), Shape::List).unwrap(), Format::Metadata { yaml: false });
        assert_eq!(response_format_for(Some(list), Shape::Object).unwrap(), Format::Json, "a list type for a get: the next entry");
        let one = "application/yaml;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
        assert_eq!(response_format_for(Some(one), Shape::Object).unwrap(), Format::Metadata { yaml: true });
        assert_eq!(response_format_for(Some(one), Shape::List).unwrap_err().code, 406);
        assert_eq!(response_format_for(Some("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1beta1"), Shape::Object).unwrap_err().code, 406);
    }

    #[test]
    fn bodies() {
        assert_eq!(body_type(Some("application/json; charset=utf-8")).unwrap(), BodyType::Json);
        assert_eq!(body_type(Some("application/cbor")).unwrap_err().code, 415);
        assert_eq!(decode_object(b"{bad", BodyType::Json).unwrap_err().code, 400);
        assert_eq!(decode_object(b"[1]", BodyType::Json).unwrap_err().code, 400);
        assert_eq!(decode_object(b"a: [", BodyType::Yaml).unwrap_err().code, 400);
        assert_eq!(decode_object(b"kind: ConfigMap\n", BodyType::Yaml).unwrap()["kind"], "ConfigMap");
    }
}
