//! Credentials from explicit variable maps and clouds.yaml files.

use std::collections::HashMap;
use std::path::PathBuf;

use kuryr_client::{
    AppCredAuth, AppCredRef, AuthMethod, ClientError, Credentials, Domain, Ident, PasswordAuth,
};

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

fn password(c: &Credentials) -> &PasswordAuth {
    match &c.auth {
        AuthMethod::Password(p) => p,
        other => panic!("expected password auth, got {other:?}"),
    }
}

fn config_error(r: Result<Credentials, ClientError>) -> String {
    match r {
        Err(ClientError::Config(m)) => m,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn env_password_with_names_and_defaults() {
    let c = Credentials::from_vars(vars(&[
        ("OS_AUTH_URL", "http://keystone:5000/v3"),
        ("OS_USERNAME", "kuryr"),
        ("OS_PASSWORD", "secret"),
        ("OS_PROJECT_NAME", "service"),
        ("OS_REGION_NAME", "RegionOne"),
    ]))
    .expect("credentials");
    let p = password(&c);
    assert_eq!(p.auth_url, "http://keystone:5000/v3");
    assert_eq!(
        p.user,
        Ident::Name {
            name: "kuryr".into(),
            domain: Domain::Name("Default".into())
        }
    );
    assert_eq!(p.password, "secret");
    assert_eq!(
        p.project,
        Ident::Name {
            name: "service".into(),
            domain: Domain::Name("Default".into())
        }
    );
    assert_eq!(c.region_name.as_deref(), Some("RegionOne"));
    assert_eq!(c.interface, "public");
    assert_eq!(c.cacert, None);
    assert!(!c.insecure);
    assert_eq!(c.network_endpoint, None);
    // The password never shows in Debug output.
    assert!(!format!("{c:?}").contains("secret"));
}

#[test]
fn env_ids_domains_interface_cacert() {
    let c = Credentials::from_vars(vars(&[
        ("OS_AUTH_TYPE", "v3password"),
        ("OS_AUTH_URL", "https://keystone/identity"),
        ("OS_USER_ID", "u-123"),
        ("OS_USERNAME", "ignored-when-id-given"),
        ("OS_PASSWORD", "pw"),
        ("OS_TENANT_NAME", "legacy"),
        ("OS_PROJECT_DOMAIN_ID", "d-9"),
        ("OS_USER_DOMAIN_NAME", "unused"),
        ("OS_INTERFACE", "internalURL"),
        ("OS_CACERT", "/etc/ssl/ca.pem"),
        ("OS_INSECURE", "true"),
    ]))
    .expect("credentials");
    let p = password(&c);
    assert_eq!(p.user, Ident::Id("u-123".into()));
    assert_eq!(
        p.project,
        Ident::Name {
            name: "legacy".into(),
            domain: Domain::Id("d-9".into())
        }
    );
    assert_eq!(c.interface, "internal");
    assert_eq!(c.cacert, Some(PathBuf::from("/etc/ssl/ca.pem")));
    assert!(c.insecure);

    let c = Credentials::from_vars(vars(&[
        ("OS_AUTH_URL", "http://k"),
        ("OS_USERNAME", "u"),
        ("OS_PASSWORD", "pw"),
        ("OS_PROJECT_ID", "p-1"),
        ("OS_PROJECT_NAME", "ignored"),
        ("OS_USER_DOMAIN_ID", "default"),
    ]))
    .expect("credentials");
    let p = password(&c);
    assert_eq!(p.project, Ident::Id("p-1".into()));
    assert_eq!(
        p.user,
        Ident::Name {
            name: "u".into(),
            domain: Domain::Id("default".into())
        }
    );
}

#[test]
fn env_missing_variables_are_named() {
    let m = config_error(Credentials::from_vars(vars(&[])));
    for needed in [
        "OS_AUTH_URL",
        "OS_USERNAME or OS_USER_ID",
        "OS_PASSWORD",
        "OS_PROJECT_NAME or OS_PROJECT_ID",
    ] {
        assert!(m.contains(needed), "{m:?} should name {needed}");
    }
    let m = config_error(Credentials::from_vars(vars(&[
        ("OS_AUTH_URL", "http://k"),
        ("OS_USERNAME", "u"),
        ("OS_PROJECT_NAME", "p"),
        ("OS_PASSWORD", ""),
    ])));
    assert!(m.contains("OS_PASSWORD"), "{m}");
    assert!(!m.contains("OS_AUTH_URL"), "{m}");

    let m = config_error(Credentials::from_vars(vars(&[("OS_AUTH_TYPE", "token")])));
    assert!(m.contains("token") && m.contains("noauth"), "{m}");

    let m = config_error(Credentials::from_vars(vars(&[("OS_AUTH_TYPE", "noauth")])));
    assert!(m.contains("OS_ENDPOINT"), "{m}");
}

#[test]
fn env_noauth() {
    let c = Credentials::from_vars(vars(&[
        ("OS_AUTH_TYPE", "noauth"),
        ("OS_ENDPOINT", "http://127.0.0.1:9696"),
        ("OS_PROJECT_ID", "proj"),
    ]))
    .expect("credentials");
    assert_eq!(
        c.auth,
        AuthMethod::NoAuth {
            project_id: Some("proj".into())
        }
    );
    assert_eq!(c.network_endpoint.as_deref(), Some("http://127.0.0.1:9696"));

    // auth type `none`, endpoint under its network-specific name, no project.
    let c = Credentials::from_vars(vars(&[
        ("OS_AUTH_TYPE", "none"),
        ("OS_NETWORK_ENDPOINT", "http://n:9696/v2.0"),
    ]))
    .expect("credentials");
    assert_eq!(c.auth, AuthMethod::NoAuth { project_id: None });

    // No auth type and no auth URL, but an endpoint: noauth.
    let c = Credentials::from_vars(vars(&[("OS_ENDPOINT", "http://n:9696")])).expect("creds");
    assert!(matches!(c.auth, AuthMethod::NoAuth { .. }));
    assert_eq!(c, Credentials::noauth("http://n:9696", None));
}

const CLOUDS: &str = r#"
clouds:
  devstack:
    auth:
      auth_url: http://keystone/identity
      username: demo
      password: devstacker
      project_name: demo
      user_domain_name: Users
      project_domain_id: default
    region_name: RegionOne
    interface: internal
    cacert: /opt/ca.pem
  byid:
    auth_type: password
    auth:
      auth_url: http://k:5000/v3
      user_id: u1
      project_id: p1
    verify: false
  kuryr:
    auth_type: none
    auth:
      endpoint: http://127.0.0.1:9696
      project_id: p-admin
  broken:
    auth:
      username: x
"#;

fn clouds_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("clouds.yaml");
    std::fs::write(&path, text).expect("write clouds.yaml");
    path
}

#[test]
fn clouds_yaml_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = clouds_file(&dir, CLOUDS);
    let path_s = path.display().to_string();
    let env = vars(&[("OS_CLIENT_CONFIG_FILE", &path_s)]);

    let c = Credentials::from_cloud_with("devstack", &env).expect("devstack");
    let p = password(&c);
    assert_eq!(p.auth_url, "http://keystone/identity");
    assert_eq!(
        p.user,
        Ident::Name {
            name: "demo".into(),
            domain: Domain::Name("Users".into())
        }
    );
    assert_eq!(
        p.project,
        Ident::Name {
            name: "demo".into(),
            domain: Domain::Id("default".into())
        }
    );
    assert_eq!(p.password, "devstacker");
    assert_eq!(c.region_name.as_deref(), Some("RegionOne"));
    assert_eq!(c.interface, "internal");
    assert_eq!(c.cacert, Some(PathBuf::from("/opt/ca.pem")));
    assert!(!c.insecure);

    // No password in the file: OS_PASSWORD fills it in, or the error says so.
    let m = config_error(Credentials::from_cloud_with("byid", &env));
    assert!(m.contains("password") && m.contains("OS_PASSWORD"), "{m}");
    let env_pw = vars(&[("OS_CLIENT_CONFIG_FILE", &path_s), ("OS_PASSWORD", "pw")]);
    let c = Credentials::from_cloud_with("byid", &env_pw).expect("byid");
    assert_eq!(password(&c).user, Ident::Id("u1".into()));
    assert_eq!(password(&c).project, Ident::Id("p1".into()));
    assert_eq!(password(&c).password, "pw");
    assert!(c.insecure);

    let c = Credentials::from_cloud_with("kuryr", &env).expect("kuryr");
    assert_eq!(
        c.auth,
        AuthMethod::NoAuth {
            project_id: Some("p-admin".into())
        }
    );
    assert_eq!(c.network_endpoint.as_deref(), Some("http://127.0.0.1:9696"));

    let m = config_error(Credentials::from_cloud_with("broken", &env));
    assert!(
        m.contains("auth.auth_url") && m.contains("auth.project_name") && m.contains("broken"),
        "{m}"
    );

    let m = config_error(Credentials::from_cloud_with("nope", &env));
    assert!(
        m.contains("nope") && m.contains("devstack, byid, kuryr, broken"),
        "{m}"
    );

    // OS_CLOUD in the environment selects the cloud.
    let env_cloud = vars(&[("OS_CLIENT_CONFIG_FILE", &path_s), ("OS_CLOUD", "kuryr")]);
    let c = Credentials::from_vars(env_cloud).expect("OS_CLOUD");
    assert!(matches!(c.auth, AuthMethod::NoAuth { .. }));
}

#[test]
fn clouds_yaml_search_order_and_secure_merge() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = home.path().join(".config").join("openstack");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("clouds.yaml"),
        "clouds:\n  home:\n    auth:\n      auth_url: http://k\n      username: u\n      project_name: p\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("secure.yaml"),
        "clouds:\n  home:\n    auth:\n      password: from-secure\n    region_name: R2\n",
    )
    .expect("write");
    let home_s = home.path().display().to_string();
    let missing = home.path().join("absent.yaml").display().to_string();
    // OS_CLIENT_CONFIG_FILE names a file that does not exist: the next place is used.
    let env = vars(&[("HOME", &home_s), ("OS_CLIENT_CONFIG_FILE", &missing)]);
    let paths = kuryr_client::clouds_yaml_paths(&env);
    assert_eq!(paths.first(), Some(&PathBuf::from(&missing)));
    assert_eq!(
        paths.last(),
        Some(&PathBuf::from("/etc/openstack/clouds.yaml"))
    );
    let c = Credentials::from_cloud_with("home", &env).expect("home");
    assert_eq!(password(&c).password, "from-secure");
    assert_eq!(c.region_name.as_deref(), Some("R2"));

    // Nothing anywhere: the error lists where it looked.
    let empty = tempfile::tempdir().expect("tempdir");
    let empty_s = empty.path().display().to_string();
    let env = vars(&[("HOME", &empty_s)]);
    let m = config_error(Credentials::from_cloud_with("home", &env));
    assert!(m.contains("no clouds.yaml") && m.contains(&empty_s), "{m}");
}

#[test]
fn clouds_yaml_malformed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = clouds_file(&dir, "clouds: [unclosed");
    let m = config_error(Credentials::from_clouds_yaml(&path, None, "x"));
    assert!(m.contains("not valid YAML"), "{m}");
    let path = clouds_file(&dir, "clouds:\n  x:\n    auth: 5\n");
    let m = config_error(Credentials::from_clouds_yaml(&path, None, "x"));
    assert!(m.contains("\"x\""), "{m}");
}

fn app_cred(c: &Credentials) -> &AppCredAuth {
    match &c.auth {
        AuthMethod::ApplicationCredential(a) => a,
        other => panic!("expected application credential auth, got {other:?}"),
    }
}

#[test]
fn env_application_credentials() {
    let c = Credentials::from_vars(vars(&[
        ("OS_AUTH_TYPE", "v3applicationcredential"),
        ("OS_AUTH_URL", "http://k:5000/v3"),
        ("OS_APPLICATION_CREDENTIAL_ID", "ac1"),
        ("OS_APPLICATION_CREDENTIAL_SECRET", "s3cret"),
        ("OS_REGION_NAME", "R1"),
        // Left over from a password openrc: not used.
        ("OS_USERNAME", "someone"),
        ("OS_PROJECT_NAME", "somewhere"),
    ]))
    .expect("by id");
    let a = app_cred(&c);
    assert_eq!(a.auth_url, "http://k:5000/v3");
    assert_eq!(a.credential, AppCredRef::Id("ac1".into()));
    assert_eq!(a.secret, "s3cret");
    assert_eq!(c.region_name.as_deref(), Some("R1"));
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "the secret is not in Debug"
    );

    let c = Credentials::from_vars(vars(&[
        ("OS_AUTH_TYPE", "applicationcredential"),
        ("OS_AUTH_URL", "http://k"),
        ("OS_APPLICATION_CREDENTIAL_NAME", "agent"),
        ("OS_USERNAME", "kuryr-agent-h1"),
        ("OS_USER_DOMAIN_ID", "default"),
        ("OS_APPLICATION_CREDENTIAL_SECRET", "x"),
    ]))
    .expect("by name");
    assert_eq!(
        app_cred(&c).credential,
        AppCredRef::Name {
            name: "agent".into(),
            user: Ident::Name {
                name: "kuryr-agent-h1".into(),
                domain: Domain::Id("default".into())
            }
        }
    );

    // What is missing is named.
    let m = config_error(Credentials::from_vars(vars(&[
        ("OS_AUTH_TYPE", "v3applicationcredential"),
        ("OS_AUTH_URL", "http://k"),
        ("OS_APPLICATION_CREDENTIAL_NAME", "agent"),
    ])));
    assert!(
        m.contains("OS_USERNAME or OS_USER_ID") && m.contains("OS_APPLICATION_CREDENTIAL_SECRET"),
        "{m}"
    );
    let m = config_error(Credentials::from_vars(vars(&[
        ("OS_AUTH_TYPE", "v3applicationcredential"),
        ("OS_APPLICATION_CREDENTIAL_SECRET", "x"),
    ])));
    assert!(
        m.contains("OS_AUTH_URL") && m.contains("OS_APPLICATION_CREDENTIAL_ID"),
        "{m}"
    );
    let m = config_error(Credentials::from_vars(vars(&[
        ("OS_AUTH_TYPE", "token"),
        ("OS_AUTH_URL", "http://k"),
    ])));
    assert!(m.contains("v3applicationcredential"), "{m}");
}

#[test]
fn clouds_yaml_application_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = clouds_file(
        &dir,
        r#"
clouds:
  agent:
    auth_type: v3applicationcredential
    auth:
      auth_url: http://127.0.0.1:9696/identity/v3
      application_credential_id: ac9
      application_credential_secret: sekrit
    region_name: RegionOne
    interface: public
  byname:
    auth_type: v3applicationcredential
    auth:
      auth_url: http://k
      application_credential_name: plugin
      user_id: u7
      application_credential_secret: s
  nosecret:
    auth_type: v3applicationcredential
    auth:
      auth_url: http://k
      application_credential_id: ac9
"#,
    );
    let path_s = path.display().to_string();
    let env = vars(&[("OS_CLIENT_CONFIG_FILE", &path_s)]);
    let c = Credentials::from_cloud_with("agent", &env).expect("agent");
    let a = app_cred(&c);
    assert_eq!(a.credential, AppCredRef::Id("ac9".into()));
    assert_eq!(a.secret, "sekrit");
    assert_eq!(a.auth_url, "http://127.0.0.1:9696/identity/v3");
    assert_eq!(c.auth.auth_url(), Some("http://127.0.0.1:9696/identity/v3"));
    let c = Credentials::from_cloud_with("byname", &env).expect("byname");
    assert_eq!(
        app_cred(&c).credential,
        AppCredRef::Name {
            name: "plugin".into(),
            user: Ident::Id("u7".into())
        }
    );
    let m = config_error(Credentials::from_cloud_with("nosecret", &env));
    assert!(
        m.contains("auth.application_credential_secret") && m.contains("nosecret"),
        "{m}"
    );
}
