//! Services: the workers' (port `http`, the OpenAI API and `/metrics`) and those of the vLLM
//! servers (the generator's and the process reward model's).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as K8sServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::vllm::VllmRole;
use super::{Component, child_meta, selector_labels};
use crate::crd::ServiceSpec;
use crate::layout::{Names, VLLM_PORT};

fn http_port(port: i32) -> ServicePort {
    ServicePort {
        name: Some("http".to_owned()),
        port,
        target_port: Some(IntOrString::String("http".to_owned())),
        protocol: Some("TCP".to_owned()),
        app_protocol: Some("http".to_owned()),
        ..ServicePort::default()
    }
}

pub fn worker(names: &Names, owner: &OwnerReference, spec: &ServiceSpec) -> Service {
    Service {
        metadata: child_meta(names.worker(), names, Component::Worker, owner),
        spec: Some(K8sServiceSpec {
            type_: Some(spec.type_.as_str().to_owned()),
            selector: Some(selector_labels(names, Component::Worker)),
            ports: Some(vec![http_port(spec.port)]),
            ..K8sServiceSpec::default()
        }),
        status: None,
    }
}

/// The Service of one of the endpoint's vLLM servers (the generator's or the PRM's).
pub fn vllm(names: &Names, owner: &OwnerReference, role: VllmRole) -> Service {
    Service {
        metadata: child_meta(role.name(names), names, role.component(), owner),
        spec: Some(K8sServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(names, role.component())),
            ports: Some(vec![http_port(VLLM_PORT)]),
            ..K8sServiceSpec::default()
        }),
        status: None,
    }
}
