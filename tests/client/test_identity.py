"""Identity that holds up (issue 8 section 3): application credentials with the real
`openstack` CLI, token chains and revocations, signing key rotation, bounded and
equal-cost logins, and the credentials `kuryr credential` makes for agents and plugins."""

import concurrent.futures
import datetime
import os
import subprocess
import time

import requests

from cloud import KURYR_BIN, OPENSTACK_BIN, Creds, Server, make_user, osc, password, token_for, unique


def names(roles):
    """Role names of the CLI's JSON output (a list of role objects)."""
    return sorted(r["name"] for r in roles)


class AppCred:
    """Credentials of an application credential, as OS_* variables for the CLI."""

    def __init__(self, server, ac_id=None, secret=None, name=None, username=None):
        self.server, self.id, self.secret = server, ac_id, secret
        self.name, self.username = name, username

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update(OS_AUTH_TYPE="v3applicationcredential", OS_AUTH_URL=self.server.auth_url,
                   OS_APPLICATION_CREDENTIAL_SECRET=self.secret, OS_IDENTITY_API_VERSION="3",
                   OS_REGION_NAME="RegionOne", OS_INTERFACE="public")
        if self.id:
            env["OS_APPLICATION_CREDENTIAL_ID"] = self.id
        else:
            env.update(OS_APPLICATION_CREDENTIAL_NAME=self.name, OS_USERNAME=self.username,
                       OS_USER_DOMAIN_NAME="Default")
        return env


def from_openrc(server, path):
    """The AppCred an openrc written by `kuryr credential` holds."""
    values = {}
    with open(path) as f:
        for line in f:
            if line.startswith("export "):
                k, _, v = line[len("export "):].strip().partition("=")
                values[k] = v
    assert values["OS_AUTH_TYPE"] == "v3applicationcredential"
    assert values["OS_AUTH_URL"] == server.auth_url
    return AppCred(server, values["OS_APPLICATION_CREDENTIAL_ID"],
                   values["OS_APPLICATION_CREDENTIAL_SECRET"])


def login(server, identity, scope=None):
    body = {"auth": {"identity": identity}}
    if scope:
        body["auth"]["scope"] = scope
    return requests.post(f"{server.auth_url}/auth/tokens", json=body, timeout=30)


def password_login(server, user, pw, project=None):
    identity = {"methods": ["password"], "password": {
        "user": {"name": user, "domain": {"name": "Default"}, "password": pw}}}
    scope = {"project": {"name": project, "domain": {"name": "Default"}}} if project else None
    return login(server, identity, scope)


def password_token(server, user, pw, project):
    r = password_login(server, user, pw, project)
    assert r.status_code == 201, r.text
    return r.headers["X-Subject-Token"]


def derive(server, token):
    """A token got with the token method from `token` (same scope)."""
    r = requests.get(f"{server.auth_url}/auth/tokens",
                     headers={"X-Auth-Token": token, "X-Subject-Token": token}, timeout=30)
    assert r.status_code == 200, r.text
    project = r.json()["token"]["project"]["id"]
    r = login(server, {"methods": ["token"], "token": {"id": token}}, {"project": {"id": project}})
    assert r.status_code == 201, r.text
    return r.headers["X-Subject-Token"]


def token_info(server, token):
    """The token's body if it is valid now (it checks itself), else None."""
    r = requests.get(f"{server.auth_url}/auth/tokens",
                     headers={"X-Auth-Token": token, "X-Subject-Token": token}, timeout=30)
    if r.status_code == 200:
        return r.json()["token"]
    assert r.status_code in (401, 404), r.text
    return None


def alive(server, token):
    return token_info(server, token) is not None


def neutron_status(server, token):
    return requests.get(f"{server.url}/networking/v2.0/networks",
                        headers={"X-Auth-Token": token}, timeout=30).status_code


def revoke(server, by, token):
    r = requests.delete(f"{server.auth_url}/auth/tokens",
                        headers={"X-Auth-Token": by, "X-Subject-Token": token}, timeout=30)
    assert r.status_code == 204, r.text


def wait_for(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def admin_get(server, admin_token, path):
    r = requests.get(f"{server.auth_url}{path}", headers={"X-Auth-Token": admin_token}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def role_names(info):
    return sorted(r["name"] for r in info["roles"])


# Application credentials ----------------------------------------------------

def test_app_credential_lifecycle_with_the_cli(admin, tenants):
    member = tenants[0]
    ac = osc(member, "application", "credential", "create", "--description", "ci", unique("ac"))
    assert ac["Unrestricted"] is False and names(ac["Roles"]) == ["member"] and ac["Secret"]
    assert ac["Expires At"] is None and ac["Description"] == "ci"
    listed = {x["ID"]: x for x in osc(member, "application", "credential", "list")}
    assert ac["ID"] in listed and listed[ac["ID"]]["Name"] == ac["Name"]
    shown = osc(member, "application", "credential", "show", ac["Name"])
    assert shown["ID"] == ac["ID"] and "Secret" not in shown

    by_id = AppCred(member.server, ac["ID"], ac["Secret"])
    issued = osc(by_id, "token", "issue")
    assert issued["project_id"] == ac["Project ID"]
    info = token_info(member.server, issued["id"])
    assert info["methods"] == ["application_credential"] and role_names(info) == ["member"]
    assert info["application_credential"] == {"id": ac["ID"], "name": ac["Name"],
                                              "restricted": True}
    assert neutron_status(member.server, issued["id"]) == 200
    by_name = AppCred(member.server, name=ac["Name"], username=member.username,
                      secret=ac["Secret"])
    assert osc(by_name, "token", "issue")["project_id"] == ac["Project ID"]
    wrong = AppCred(member.server, ac["ID"], ac["Secret"] + "x")
    assert "401" in osc(wrong, "token", "issue", expect_fail=True)

    # Another user sees none of it; an admin does.
    other = tenants[1]
    err = osc(other, "application", "credential", "show", ac["ID"], expect_fail=True)
    assert "No ApplicationCredential found" in err
    user_id = info["user"]["id"]
    r = requests.get(f"{member.server.auth_url}/users/{user_id}/application_credentials",
                     headers={"X-Auth-Token": token_for(other)}, timeout=30)
    assert r.status_code == 403
    r = requests.get(f"{member.server.auth_url}/users/{user_id}/application_credentials",
                     headers={"X-Auth-Token": token_for(admin)}, timeout=30)
    assert r.status_code == 200 and ac["ID"] in {x["id"] for x in r.json()[
        "application_credentials"]}

    osc(member, "application", "credential", "delete", ac["Name"], fmt=None)
    assert ac["ID"] not in {x["ID"] for x in osc(member, "application", "credential", "list")}
    assert "401" in osc(by_id, "token", "issue", expect_fail=True)
    # Its tokens went with it.
    assert not alive(member.server, issued["id"])
    assert neutron_status(member.server, issued["id"]) == 401


def test_app_credential_roles_are_a_subset_of_the_creators(admin, tenants):
    member, _, _ = tenants
    # The member also reads; a credential may carry either role, not more.
    osc(admin, "role", "add", "--project", member.project, "--user", member.username, "reader",
        fmt=None)
    reader_only = osc(member, "application", "credential", "create", "--role", "reader",
                      unique("ac"))
    assert names(reader_only["Roles"]) == ["reader"]
    both = osc(member, "application", "credential", "create", unique("ac"))
    assert names(both["Roles"]) == ["member", "reader"]
    err = osc(member, "application", "credential", "create", "--role", "admin", unique("ac"),
              expect_fail=True)
    assert "unassigned role" in err and "400" in err
    # The bootstrap admin holds only `admin` on its project: no `member` to delegate.
    err = osc(admin, "application", "credential", "create", "--role", "member", unique("ac"),
              expect_fail=True)
    assert "unassigned role" in err

    ac = AppCred(member.server, reader_only["ID"], reader_only["Secret"])
    info = token_info(member.server, osc(ac, "token", "issue")["id"])
    assert role_names(info) == ["reader"]
    # Each use is narrowed to the roles the user still has: without `reader`, the
    # reader-only credential logs in no more, and the other one as member alone.
    osc(admin, "role", "remove", "--project", member.project, "--user", member.username,
        "reader", fmt=None)
    assert "401" in osc(ac, "token", "issue", expect_fail=True)
    still = AppCred(member.server, both["ID"], both["Secret"])
    assert role_names(token_info(member.server, osc(still, "token", "issue")["id"])) == ["member"]


def test_restricted_app_credentials_cannot_manage_app_credentials(tenants):
    member = tenants[0]
    restricted = osc(member, "application", "credential", "create", unique("ac"))
    unrestricted = osc(member, "application", "credential", "create", "--unrestricted",
                       unique("ac"))
    assert unrestricted["Unrestricted"] is True
    r_creds = AppCred(member.server, restricted["ID"], restricted["Secret"])
    u_creds = AppCred(member.server, unrestricted["ID"], unrestricted["Secret"])
    err = osc(r_creds, "application", "credential", "create", unique("ac"), expect_fail=True)
    assert "403" in err and "not allowed for managing" in err
    err = osc(r_creds, "application", "credential", "delete", unrestricted["ID"], fmt=None,
              expect_fail=True)
    assert "not allowed for managing" in err
    made = osc(u_creds, "application", "credential", "create", unique("ac"))
    assert made["Project ID"] == restricted["Project ID"]
    # A token got from a restricted credential's token is still restricted.
    token = osc(r_creds, "token", "issue")["id"]
    child = derive(member.server, token)
    user_id = token_info(member.server, token)["user"]["id"]
    r = requests.post(f"{member.server.auth_url}/users/{user_id}/application_credentials",
                      json={"application_credential": {"name": unique("ac")}},
                      headers={"X-Auth-Token": child}, timeout=30)
    assert r.status_code == 403, r.text
    osc(u_creds, "application", "credential", "delete", made["ID"], fmt=None)


def test_app_credential_expiry(tenants):
    member = tenants[0]
    err = osc(member, "application", "credential", "create", "--expiration",
              "2001-01-01T00:00:00", unique("ac"), expect_fail=True)
    assert "400" in err and "future" in err
    # Long enough for the CLI to make it and log in with it on a busy machine.
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=20)
    ac = osc(member, "application", "credential", "create", "--expiration",
             soon.strftime("%Y-%m-%dT%H:%M:%S"), unique("ac"))
    assert ac["Expires At"].startswith(soon.strftime("%Y-%m-%dT%H:%M:%S"))
    by_id = {"methods": ["application_credential"],
             "application_credential": {"id": ac["ID"], "secret": ac["Secret"]}}
    r = login(member.server, by_id)
    assert r.status_code == 201, r.text
    token = r.headers["X-Subject-Token"]
    # A token never outlives its credential.
    expires = datetime.datetime.strptime(r.json()["token"]["expires_at"],
                                         "%Y-%m-%dT%H:%M:%S.%f%z")
    assert expires <= soon.replace(microsecond=0) + datetime.timedelta(seconds=1)
    assert alive(member.server, token)
    wait_for(lambda: not alive(member.server, token), 40, "the token to expire")
    r = login(member.server, by_id)
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


# Token chains and revocation ---------------------------------------------------

def test_revoking_a_token_revokes_the_tokens_got_from_it(admin, tenants):
    s = admin.server
    m = tenants[0]
    root = password_token(s, m.username, m.password, m.project)
    child = derive(s, root)
    grandchild = derive(s, child)
    sibling = derive(s, root)
    root_audit = token_info(s, root)["audit_ids"][0]
    assert token_info(s, grandchild)["audit_ids"][1] == root_audit
    assert token_info(s, child)["expires_at"] == token_info(s, root)["expires_at"]
    for t in (root, child, grandchild, sibling):
        assert alive(s, t)
    revoke(s, child, child)
    assert not alive(s, child) and not alive(s, grandchild)
    assert neutron_status(s, grandchild) == 401
    assert alive(s, root) and alive(s, sibling) and neutron_status(s, sibling) == 200
    # An admin revokes others' tokens; the chain's root takes every descendant.
    revoke(s, token_for(admin), root)
    assert not alive(s, root) and not alive(s, sibling)
    events = admin_get(s, token_for(admin), "/OS-REVOKE/events")["events"]
    assert root_audit in {e.get("audit_id") for e in events}


def test_password_change_disable_and_delete_revoke_a_users_tokens(admin, tenants):
    s = admin.server
    m = tenants[0]
    old = password_token(s, m.username, m.password, m.project)
    derived = derive(s, old)
    ac = osc(m, "application", "credential", "create", unique("ac"))
    ac_token = osc(AppCred(s, ac["ID"], ac["Secret"]), "token", "issue")["id"]
    assert alive(s, old) and alive(s, derived) and alive(s, ac_token)

    new_pw = password()
    osc(admin, "user", "set", "--password", new_pw, m.username, fmt=None)
    for t in (old, derived, ac_token):
        assert not alive(s, t) and neutron_status(s, t) == 401
    assert password_login(s, m.username, m.password, m.project).status_code == 401
    fresh = password_token(s, m.username, new_pw, m.project)
    assert alive(s, fresh) and neutron_status(s, fresh) == 200
    # The application credential itself survives a password change (as in Keystone).
    ac_fresh = osc(AppCred(s, ac["ID"], ac["Secret"]), "token", "issue")["id"]
    assert alive(s, ac_fresh)

    osc(admin, "user", "set", "--disable", m.username, fmt=None)
    assert not alive(s, fresh) and not alive(s, ac_fresh)
    assert password_login(s, m.username, new_pw, m.project).status_code == 401
    osc(admin, "user", "set", "--enable", m.username, fmt=None)
    # Enabled again: old tokens stay dead, new logins work.
    assert not alive(s, fresh)
    again = password_token(s, m.username, new_pw, m.project)
    assert alive(s, again)

    osc(admin, "user", "delete", m.username, fmt=None)
    assert not alive(s, again)
    assert password_login(s, m.username, new_pw, m.project).status_code == 401


def test_disabling_or_deleting_a_project_revokes_its_tokens(admin, tenants):
    s = admin.server
    m = tenants[0]
    token = password_token(s, m.username, m.password, m.project)
    assert alive(s, token)
    osc(admin, "project", "set", "--disable", m.project, fmt=None)
    assert not alive(s, token) and neutron_status(s, token) == 401
    osc(admin, "project", "set", "--enable", m.project, fmt=None)
    assert not alive(s, token)
    token = password_token(s, m.username, m.password, m.project)
    assert alive(s, token)
    osc(admin, "project", "delete", m.project, fmt=None)
    assert not alive(s, token)
    events = admin_get(s, token_for(admin), "/OS-REVOKE/events")["events"]
    assert any("project_id" in e for e in events)


def test_expired_revocations_are_pruned():
    s = Server("--token-ttl", "4")
    try:
        admin = Creds(s, "admin", s.admin_password, "admin")
        m = make_user(admin, "admin")
        admin_token = lambda: password_token(s, "admin", s.admin_password, "admin")
        events = lambda: admin_get(s, admin_token(), "/OS-REVOKE/events")["events"]
        # Raw HTTP from here: each record is looked at well within the 4 s it may live.
        t = password_token(s, m.username, m.password, "admin")
        audit = token_info(s, t)["audit_ids"][0]
        revoke(s, t, t)
        assert audit in {e.get("audit_id") for e in events()}
        user_id = token_info(s, t := password_token(s, m.username, m.password, "admin"))[
            "user"]["id"]
        r = requests.patch(f"{s.auth_url}/users/{user_id}", timeout=30,
                           json={"user": {"password": password()}},
                           headers={"X-Auth-Token": admin_token()})
        assert r.status_code == 200, r.text
        assert user_id in {e.get("user_id") for e in events()}
        # Nothing they revoke outlives 4 s (+5 s of rotation slack): then they go.
        wait_for(lambda: events() == [], 40, "expired revocation records to be pruned")
    finally:
        s.stop()


# Signing keys --------------------------------------------------------------------

def signing_keys(s, token):
    return admin_get(s, token, "/OS-KURYR/signing_keys")["signing_keys"]


def test_key_rotation_keeps_old_tokens_until_they_expire():
    s = Server("--token-ttl", "5")
    try:
        token = lambda: password_token(s, "admin", s.admin_password, "admin")
        t1 = token()
        kid1 = t1.split(".")[0]
        keys = signing_keys(s, t1)
        assert [(k["id"], k["primary"]) for k in keys] == [(kid1, True)]
        r = requests.post(f"{s.auth_url}/OS-KURYR/signing_keys", headers={"X-Auth-Token": t1},
                          timeout=30)
        assert r.status_code == 201, r.text
        kid2 = r.json()["signing_key"]["id"]
        assert kid2 != kid1 and r.json()["signing_key"]["primary"] is True
        old = {k["id"]: k for k in signing_keys(s, t1)}[kid1]
        assert old["primary"] is False and old["retired_at"] and old["verify_until"]
        # Signed with the previous key: still valid, for Keystone and for Neutron.
        assert alive(s, t1) and neutron_status(s, t1) == 200
        t2 = token()
        assert t2.split(".")[0] == kid2 and alive(s, t2)
        wait_for(lambda: not alive(s, t1), 15, "the old key's token to expire")
        wait_for(lambda: kid1 not in {k["id"] for k in signing_keys(s, token())}, 30,
                 "the retired key to be deleted")
        assert alive(s, token())
        # A member may neither list nor rotate keys.
        m = make_user(Creds(s, "admin", s.admin_password, "admin"), "admin")
        mt = password_token(s, m.username, m.password, "admin")
        assert requests.post(f"{s.auth_url}/OS-KURYR/signing_keys", timeout=30,
                             headers={"X-Auth-Token": mt}).status_code == 403
    finally:
        s.stop()


def test_signing_keys_rotate_by_themselves():
    s = Server("--token-ttl", "60", "--signing-key-rotation", "2")
    try:
        t1 = password_token(s, "admin", s.admin_password, "admin")
        kid1 = t1.split(".")[0]
        primary = lambda: [k["id"] for k in signing_keys(s, t1) if k["primary"]]
        wait_for(lambda: primary() != [kid1], 20, "an automatic rotation")
        assert alive(s, t1)
        t2 = password_token(s, "admin", s.admin_password, "admin")
        assert t2.split(".")[0] != kid1
    finally:
        s.stop()


# Logins: equal cost, bounded -------------------------------------------------

def flood(s, identities, workers=24):
    """Logs in with all `identities` at once; returns the responses."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda i: login(s, i), identities))


def pw_identity(user, pw):
    return {"methods": ["password"], "password": {
        "user": {"name": user, "domain": {"name": "Default"}, "password": pw}}}


def test_unknown_and_disabled_users_take_a_password_check_and_floods_get_503():
    # One check at a time and no waiting: a login that costs a password check (and so
    # takes the one turn) is refused with 503 while another holds it. Logins that
    # skipped the check for unknown or disabled users would never see a 503.
    s = Server("--login-concurrency", "1", "--login-wait-ms", "1")
    try:
        admin = Creds(s, "admin", s.admin_password, "admin")
        disabled = make_user(admin, "admin")
        osc(admin, "user", "set", "--disable", disabled.username, fmt=None)
        kinds = {
            "unknown": lambda i: pw_identity(unique("nobody"), "x"),
            "wrong password": lambda i: pw_identity("admin", "not-it"),
            "disabled": lambda i: pw_identity(disabled.username, disabled.password),
            "unknown app credential": lambda i: {
                "methods": ["application_credential"],
                "application_credential": {"id": unique("ac"), "secret": "x"}},
        }
        for kind, make in kinds.items():
            # Alone, it is a plain 401 (positive control for the 503s below).
            alone = login(s, make(0))
            assert alone.status_code == 401, (kind, alone.text)
            codes = set()
            for _ in range(5):
                codes |= {r.status_code for r in flood(s, [make(i) for i in range(24)])}
                if 503 in codes:
                    break
            assert codes <= {401, 503} and 503 in codes, (kind, codes)
        busy = next(r for r in flood(s, [kinds["unknown"](i) for i in range(24)])
                    if r.status_code == 503)
        assert busy.headers["Retry-After"] == "1"
        assert busy.json()["error"]["code"] == 503
        # The right password still logs in once the flood is over.
        assert password_login(s, "admin", s.admin_password, "admin").status_code == 201
    finally:
        s.stop()


# Roles and agent credentials -------------------------------------------------------

def test_builtin_roles_and_role_create_delete(admin):
    names = {r["Name"] for r in osc(admin, "role", "list")}
    assert {"admin", "manager", "member", "reader", "service"} <= names
    name = f"kuryr_agent:{unique('h')}"
    role = osc(admin, "role", "create", name)
    assert role["name"] == name
    err = osc(admin, "role", "create", name, expect_fail=True)
    assert "409" in err or "Duplicate" in err
    osc(admin, "role", "delete", name, fmt=None)
    assert name not in {r["Name"] for r in osc(admin, "role", "list")}
    err = osc(admin, "role", "delete", "service", fmt=None, expect_fail=True)
    assert "built in" in err


def kuryr_credential(admin, *args):
    env = admin.env()
    p = subprocess.run([KURYR_BIN, "credential", *args], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p


def test_agent_credential_is_host_scoped_and_replaced_on_rerun(admin, tmp_path):
    host = unique("h")
    rc = tmp_path / "agent.rc"
    kuryr_credential(admin, "agent", "--host", host, "--output", str(rc))
    assert oct(rc.stat().st_mode & 0o777) == "0o600"
    agent = from_openrc(admin.server, rc)
    info = token_info(admin.server, osc(agent, "token", "issue")["id"])
    assert role_names(info) == [f"kuryr_agent:{host}"]
    assert info["project"]["name"] == "service"
    assert info["user"]["name"] == f"kuryr-agent-{host}"
    assert info["application_credential"]["restricted"] is True
    # It cannot make itself more credentials.
    err = osc(agent, "application", "credential", "create", unique("ac"), expect_fail=True)
    assert "403" in err

    # Again: a new credential, and the previous one logs in no more.
    kuryr_credential(admin, "agent", "--host", host, "--output", str(rc))
    again = from_openrc(admin.server, rc)
    assert again.id != agent.id
    assert "401" in osc(agent, "token", "issue", expect_fail=True)
    assert osc(again, "token", "issue")["project_id"] == info["project"]["id"]

    # The clouds.yaml form works as well (the agent reads it with --os-cloud).
    clouds = tmp_path / "clouds.yaml"
    kuryr_credential(admin, "agent", "--host", host, "--format", "clouds", "--output",
                     str(clouds))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_CLIENT_CONFIG_FILE=str(clouds), OS_CLOUD=f"kuryr-agent-{host}")
    p = subprocess.run([OPENSTACK_BIN, "token", "issue", "-f", "json"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_plugin_credential_is_a_project_manager(admin, tmp_path):
    """The Docker plugin's credential: manager of its project (kuryr-libnetwork sets
    Docker's MAC on the ports it adopts, which neutron lets only a manager of the
    network's project do), nothing on any other project."""
    host = unique("h")
    project = unique("proj")
    osc(admin, "project", "create", project)
    rc = tmp_path / "plugin.rc"
    kuryr_credential(admin, "plugin", "--host", host, "--project", project, "--output", str(rc))
    plugin = from_openrc(admin.server, rc)
    info = token_info(admin.server, osc(plugin, "token", "issue")["id"])
    assert role_names(info) == ["manager"] and info["project"]["name"] == project
    net = osc(plugin, "network", "create", unique("net"))
    assert net["project_id"] == info["project"]["id"]
    osc(plugin, "subnet", "create", "--network", net["id"], "--subnet-range", "10.61.0.0/24",
        unique("sub"))
    port = osc(plugin, "port", "create", "--network", net["id"], unique("port"))
    osc(plugin, "port", "set", "--mac-address", "02:42:0a:3d:00:09", port["id"], fmt=None)
    assert osc(plugin, "port", "show", port["id"])["mac_address"] == "02:42:0a:3d:00:09"
    # Control: a member of the same project may not.
    member = make_user(admin, project)
    err = osc(member, "port", "set", "--mac-address", "02:42:0a:3d:00:0a", port["id"],
              fmt=None, expect_fail=True)
    assert "403" in err or "not authorized" in err.lower() or "disallowed" in err.lower(), err
    osc(plugin, "port", "delete", port["id"], fmt=None)
    osc(plugin, "network", "delete", net["id"], fmt=None)


def test_controller_credential_is_member_and_service_of_one_project(admin, tmp_path):
    """`kuryr controller`'s credential: it makes pods' ports bound to a node (Neutron's
    `service_api` rule) in its own project, and sees nothing of any other."""
    project, other = unique("proj"), unique("proj")
    for p in (project, other):
        osc(admin, "project", "create", p)
    rc = tmp_path / "controller.rc"
    kuryr_credential(admin, "controller", "--cluster", "c1", "--project", project,
                     "--output", str(rc))
    ctl = from_openrc(admin.server, rc)
    info = token_info(admin.server, osc(ctl, "token", "issue")["id"])
    assert role_names(info) == ["member", "service"], info["roles"]
    assert info["project"]["name"] == project
    assert info["user"]["name"] == "kuryr-controller-c1"
    assert info["application_credential"]["restricted"] is True
    net = osc(ctl, "network", "create", unique("net"))
    osc(ctl, "subnet", "create", "--network", net["id"], "--subnet-range", "10.62.0.0/24",
        unique("sub"))
    port = osc(ctl, "port", "create", "--network", net["id"], "--host", "node-1",
               "--device-owner", "compute:kuryr", unique("port"))
    assert osc(admin, "port", "show", port["id"])["binding_host_id"] == "node-1"
    # Control: a plain member of the same project may not bind a port to a host.
    member = make_user(admin, project)
    err = osc(member, "port", "create", "--network", net["id"], "--host", "node-1",
              unique("port"), expect_fail=True)
    assert "403" in err or "not authorized" in err.lower() or "disallowed" in err.lower(), err
    # The attacker's side: another project's network it may read (Neutron's
    # service_api rule, as for Nova's service user) but neither rename nor delete,
    # and it has none of the admin's power to make provider networks or credentials.
    theirs = osc(make_user(admin, other), "network", "create", unique("net"))
    err = osc(ctl, "network", "set", "--name", "taken", theirs["id"], fmt=None,
              expect_fail=True)
    assert "403" in err or "404" in err or "disallowed" in err.lower(), err
    err = osc(ctl, "network", "delete", theirs["id"], fmt=None, expect_fail=True)
    assert "403" in err or "404" in err or "disallowed" in err.lower() or "failed" in err, err
    kept = osc(admin, "network", "show", theirs["id"])
    assert kept["id"] == theirs["id"] and kept["name"] == theirs["name"]
    err = osc(ctl, "network", "create", "--provider-network-type", "vxlan", unique("net"),
              expect_fail=True)
    assert "403" in err or "disallowed" in err.lower() or "not authorized" in err.lower(), err
    err = osc(ctl, "application", "credential", "create", unique("ac"), expect_fail=True)
    assert "403" in err
    osc(ctl, "port", "delete", port["id"], fmt=None)
    osc(ctl, "network", "delete", net["id"], fmt=None)
    osc(admin, "network", "delete", theirs["id"], fmt=None)


def test_kuryr_credential_without_admin_rights_fails_clearly(tenants):
    member = tenants[0]
    p = subprocess.run([KURYR_BIN, "credential", "agent", "--host", "h1"], env=member.env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "403" in p.stderr or "not authorized" in p.stderr, p.stderr
