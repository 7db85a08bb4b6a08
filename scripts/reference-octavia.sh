#!/usr/bin/env bash
# Copyright 2026 The kuryr authors. Licensed under the Apache License, Version 2.0.
#
# Starts a REAL OpenStack Octavia API (PyPI octavia, pinned below) on loopback as a
# reference peer for kuryr's Octavia v2 API. Nothing here is part of kuryr or its CI.
#
#   octavia API ......... http://127.0.0.1:${OCTAVIA_REF_PORT:-19876}/load-balancer
#                         (mounted under /load-balancer as devstack does) auth_strategy
#                         noauth: the project comes from X-Project-Id, everyone is admin,
#                         quotas are not enforced
#                         http://127.0.0.1:$((OCTAVIA_REF_PORT+1))/load-balancer (19877)
#                         auth_strategy testing: same DB, keystone-like: send
#                         X-Project-Id and X-Roles (member / admin / reader); policies,
#                         project scoping and quotas apply
#   database ............ sqlite file $DATA/octavia.db, schema from the models
#                         (create_all + lookup rows, as Octavia's own API tests do:
#                         the alembic migrations need MySQL)
#
# Providers (GET /v2/lbaas/providers) and the network: Octavia's no-op network driver,
# made deterministic (subnet S is in network uuid5(S); port P has one fixed IP,
# 203.0.113.50). A VIP allocated on a subnet is always 198.0.2.5 (noop provider code).
#   noop_driver  Octavia's own no-op provider. It never reports a status back, so
#                everything it is given stays PENDING_CREATE/PENDING_UPDATE/
#                PENDING_DELETE forever (good for 409 "immutable" answers).
#   ovn          (default) an EMULATION of ovn-octavia-provider 11.0.0 written here:
#                no-op data plane, but the same UnsupportedOptionError checks and
#                texts as the real OVN driver (TCP/UDP/SCTP only, SOURCE_IP_PORT and
#                SOURCE_IP only, SOURCE_IP persistence only, no allowed_cidrs, no
#                member monitor_address/port, TCP/UDP-CONNECT monitors only, no L7,
#                no failover, no flavors/AZs), and it reports ACTIVE/DELETED and
#                operating statuses to Octavia 1 s after the last change, as
#                the real OVN driver does from its worker thread (it calls the
#                driver-agent's DriverUpdater in-process: no octavia-driver-agent,
#                no concurrent sqlite writers). Statuses approximate OVN's;
#                everything else is real Octavia.
#   noop_active  the same status reporting without OVN's checks: accepts HTTP,
#                ROUND_ROBIN, L7, ... (to see the shapes of what OVN refuses).
#
# usage: reference-octavia.sh [start|stop|status|restart|reset]
#        reset = stop + delete the database (fresh state on next start)
# env:   KURYR_CACHE (venv location, default ~/.cache/kuryr), OCTAVIA_REF_PORT (19876),
#        OCTAVIA_REF_DATA (/tmp/octavia-ref), OCTAVIA_REF_DEFAULT_PROVIDER (ovn),
#        OCTAVIA_REF_STATUS_DELAY (1.0: seconds before 'ovn'/'noop_active' report)
set -euo pipefail

OCTAVIA_VERSION=19.0.0
CACHE=${KURYR_CACHE:-$HOME/.cache/kuryr}
VENV=$CACHE/octavia-ref-venv
DATA=${OCTAVIA_REF_DATA:-/tmp/octavia-ref}
PORT=${OCTAVIA_REF_PORT:-19876}
DEFAULT_PROVIDER=${OCTAVIA_REF_DEFAULT_PROVIDER:-ovn}
PY=$VENV/bin/python

log() { echo "[reference-octavia] $*"; }
pid_of() { [ -f "$1" ] && cat "$1" 2>/dev/null || true; }
alive() { local p; p=$(pid_of "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

stop_all() {
  for pf in "$DATA/api.pid"; do
    if alive "$pf"; then
      p=$(pid_of "$pf"); log "stopping $p ($pf)"
      kill -TERM "$p"
      for _ in $(seq 1 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true
    fi
    rm -f "$pf"
  done
}

status_all() {
  for pf in "$DATA/api.pid"; do
    if alive "$pf"; then echo "UP   $(pid_of "$pf")  $pf"; else echo "DOWN       $pf"; fi
  done
}

case "${1:-start}" in
  stop) stop_all; exit 0;;
  status) status_all; exit 0;;
  restart) stop_all;;
  reset) stop_all; rm -f "$DATA/octavia.db" "$DATA"/log/*; exit 0;;
  start) ;;
  *) echo "usage: $0 [start|stop|status|restart|reset]"; exit 2;;
esac

if alive "$DATA/api.pid"; then log "already running (pid $(pid_of "$DATA/api.pid"))"; exit 0; fi

# ------------------------------------------------------------------ 1. venv (~30 s)
if [ ! -x "$VENV/bin/octavia-api" ]; then
  log "creating $VENV (octavia==$OCTAVIA_VERSION)"
  start=$(date +%s)
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
  constraints=$(mktemp)
  sed -n '/^# ---- constraints ----$/,$p' "${BASH_SOURCE[0]}" | grep -v '^#' > "$constraints"
  "$VENV/bin/pip" install -q -c "$constraints" "octavia==$OCTAVIA_VERSION"
  rm -f "$constraints"
  log "venv ready in $(( $(date +%s) - start )) s"
fi
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# ------------------------------------------------------------------ 2. the 'ovn' emulating provider
# A module plus a hand-made dist-info so that stevedore finds the entry point.
mkdir -p "$SITE/kuryr_octavia_ref-0.1.dist-info"
printf 'Metadata-Version: 2.1\nName: kuryr-octavia-ref\nVersion: 0.1\n' \
  > "$SITE/kuryr_octavia_ref-0.1.dist-info/METADATA"
printf '[octavia.api.drivers]\novn = kuryr_octavia_ref:OvnEmulationDriver\nnoop_active = kuryr_octavia_ref:ActiveNoopDriver\n' \
  > "$SITE/kuryr_octavia_ref-0.1.dist-info/entry_points.txt"
touch "$SITE"   # stevedore caches entry points by the mtimes of sys.path entries
cat > "$SITE/kuryr_octavia_ref.py" <<'PYEOF'
"""No-op Octavia provider that validates like ovn-octavia-provider 11.0.0 and
reports statuses back like it (kuryr reference tool). A real provider sends them
through octavia-lib's DriverLibrary to the octavia-driver-agent's status socket,
which runs DriverUpdater.update_loadbalancer_status(); this calls that same method
in-process instead (no agent, no concurrent sqlite writers)."""
import datetime
import os
import threading
import time
import uuid

from octavia_lib.api.drivers import data_models as dm
from octavia_lib.api.drivers import exceptions as exc
from octavia_lib.api.drivers import provider_base
from oslo_log import log as logging
import sqlalchemy

from octavia.api.drivers.driver_agent import driver_updater
from octavia.api.drivers.noop_driver import driver as noop
from octavia.db import api as db_api
from octavia.db import models as m
from octavia.network import data_models as n_models
from octavia.network.drivers.noop_driver import driver as noop_net

LOG = logging.getLogger(__name__)
# sqlite allows one writer: serve.py holds this lock around every API request and
# the status reporter holds it while it writes, so they never interleave.
DB_LOCK = threading.RLock()


# Octavia's no-op network driver invents subnets whose network is whatever network
# it saw last (often None) and ports without fixed IPs, so vip_network_id comes back
# null and a vip_port_id alone is refused. Make it deterministic and Neutron-like:
# subnet S is in network uuid5(S); port P is in network uuid5(P) with one fixed IP
# 203.0.113.50 in subnet uuid5(P).
def _derived(kind, ident):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, 'kuryr-octavia-ref/%s/%s'
                          % (kind, ident)))


_VARS = noop_net._NOOP_MANAGER_VARS
_orig_get_subnet = noop_net.NoopManager.get_subnet
_orig_get_port = noop_net.NoopManager.get_port


def _get_subnet(self, subnet_id):
    if subnet_id not in _VARS['subnets']:
        _VARS['subnets'][subnet_id] = n_models.Subnet(
            id=subnet_id, network_id=_derived('network-of-subnet', subnet_id),
            ip_version=4)
    return _orig_get_subnet(self, subnet_id)


def _get_port(self, port_id):
    if port_id not in _VARS['ports']:
        net, sub = _derived('network-of-port', port_id), _derived('subnet-of-port', port_id)
        _VARS['subnets'].setdefault(sub, n_models.Subnet(id=sub, network_id=net,
                                                         ip_version=4))
        _VARS['ports'][port_id] = n_models.Port(
            id=port_id, network_id=net,
            fixed_ips=[n_models.FixedIP(subnet_id=sub, ip_address='203.0.113.50')])
    return _orig_get_port(self, port_id)


noop_net.NoopManager.get_subnet = _get_subnet
noop_net.NoopManager.get_port = _get_port
PROTOCOLS = ('TCP', 'UDP', 'SCTP')
ALGORITHMS = ('SOURCE_IP_PORT', 'SOURCE_IP')
HM_TYPES = ('UDP-CONNECT', 'TCP')
PENDING = ('PENDING_CREATE', 'PENDING_UPDATE', 'PENDING_DELETE')
DELAY = float(os.environ.get('OCTAVIA_REF_STATUS_DELAY', '1.0'))
_REPORTERS = set()


def _set(v):
    return not isinstance(v, dm.UnsetType)


def _unsupported(msg):
    raise exc.UnsupportedOptionError(user_fault_string=msg,
                                     operator_fault_string=msg)


class OvnEmulationDriver(provider_base.ProviderDriver):
    provider = 'ovn'

    def __init__(self):
        super().__init__()
        self._noop = noop.NoopManager()
        # Octavia instantiates the driver for every request: one reporter each
        with DB_LOCK:
            if self.provider not in _REPORTERS:
                _REPORTERS.add(self.provider)
                threading.Thread(target=self._loop, daemon=True).start()

    # -- the checks and texts of ovn_octavia_provider/driver.py
    def _protocol(self, protocol):
        if protocol not in PROTOCOLS:
            _unsupported('OVN provider does not support %s protocol' % protocol)

    def _algorithm(self, algorithm):
        if algorithm not in ALGORITHMS:
            _unsupported('OVN provider does not support %s algorithm' % algorithm)

    def _persistence(self, sp):
        if sp and sp.get('type') not in ('SOURCE_IP',):
            _unsupported('OVN provider does not support %s session persistence. '
                         'Only SOURCE_IP type is supported.' % sp.get('type'))

    def _cidrs(self, cidrs):
        if _set(cidrs) and cidrs:
            _unsupported('OVN provider does not support allowed_cidrs option')

    def _monitor_opts(self, member):
        if not _set(member.monitor_address) and not _set(member.monitor_port):
            return False
        return bool(member.monitor_address or member.monitor_port)

    def _hm(self, hm, create=True):
        if not create:
            return
        if not _set(hm.type):
            _unsupported('OVN provider health monitor type not specified.')
        if hm.type not in HM_TYPES:
            _unsupported('OVN provider does not support %s health monitor type. '
                         'Supported types: %s' % (hm.type, ', '.join(HM_TYPES)))

    # -- status reporting: every 0.25 s, report what has been PENDING_* for at
    # least DELAY seconds (so that a client sees PENDING_* right after a change)
    # LBs of this provider with PENDING_* objects, and when the last of those
    # changed (cheap enough to run every 0.25 s without the lock)
    _CANDIDATES = sqlalchemy.text("""
        SELECT lb_id FROM (
          SELECT lb.id AS lb_id, COALESCE(lb.updated_at, lb.created_at) AS ts
            FROM load_balancer lb WHERE lb.provisioning_status LIKE 'PENDING%'
            AND lb.provider = :provider
          UNION ALL SELECT x.load_balancer_id, COALESCE(x.updated_at, x.created_at)
            FROM listener x WHERE x.provisioning_status LIKE 'PENDING%'
          UNION ALL SELECT x.load_balancer_id, COALESCE(x.updated_at, x.created_at)
            FROM pool x WHERE x.provisioning_status LIKE 'PENDING%'
          UNION ALL SELECT p.load_balancer_id, COALESCE(x.updated_at, x.created_at)
            FROM member x JOIN pool p ON x.pool_id = p.id
            WHERE x.provisioning_status LIKE 'PENDING%'
          UNION ALL SELECT p.load_balancer_id, COALESCE(x.updated_at, x.created_at)
            FROM health_monitor x JOIN pool p ON x.pool_id = p.id
            WHERE x.provisioning_status LIKE 'PENDING%'
          UNION ALL SELECT l.load_balancer_id, COALESCE(x.updated_at, x.created_at)
            FROM l7policy x JOIN listener l ON x.listener_id = l.id
            WHERE x.provisioning_status LIKE 'PENDING%'
          UNION ALL SELECT l.load_balancer_id, COALESCE(r.updated_at, r.created_at)
            FROM l7rule r JOIN l7policy x ON r.l7policy_id = x.id
            JOIN listener l ON x.listener_id = l.id
            WHERE r.provisioning_status LIKE 'PENDING%')
        WHERE lb_id IN (SELECT id FROM load_balancer WHERE provider = :provider)
        GROUP BY lb_id HAVING MAX(ts) <= :ripe""")

    def _loop(self):
        updater = None
        while True:
            time.sleep(0.25)
            try:
                ripe = (datetime.datetime.utcnow() -
                        datetime.timedelta(seconds=DELAY)).isoformat(' ')
                with db_api.get_engine().connect() as conn:   # cheap, no lock
                    ids = [r[0] for r in conn.execute(
                        self._CANDIDATES, {'provider': self.provider,
                                           'ripe': ripe})]
                if not ids:
                    continue
                with DB_LOCK:
                    if updater is None:
                        updater = driver_updater.DriverUpdater()
                    for status in self._pending_statuses(ids):
                        LOG.info('reporting status %s', status)
                        res = updater.update_loadbalancer_status(status)
                        if res.get('status_code') != 200:
                            LOG.error('status update failed: %s', res)
            except Exception:
                LOG.exception('status report failed')

    def _pending_statuses(self, lb_ids):
        """OVN-like status dicts for the LBs in lb_ids whose PENDING_* objects
        were all last changed at least DELAY seconds ago."""
        out = []
        ripe = datetime.datetime.utcnow() - datetime.timedelta(seconds=DELAY)
        session = db_api.get_session()
        with session.begin():
            for lb in session.query(m.LoadBalancer).filter(
                    m.LoadBalancer.id.in_(lb_ids)):
                members = [x for p in lb.pools for x in p.members]
                hms = [p.health_monitor for p in lb.pools if p.health_monitor]
                l7ps = [x for li in lb.listeners for x in li.l7policies]
                l7rs = [r for x in l7ps for r in x.l7rules]
                objs = [lb] + lb.listeners + lb.pools + members + hms + l7ps + l7rs
                last = max((o.updated_at or o.created_at for o in objs
                            if o.provisioning_status in PENDING), default=None)
                if last is None or last > ripe:
                    continue
                st = {'loadbalancers': [], 'listeners': [], 'pools': [],
                      'members': [], 'healthmonitors': [], 'l7policies': [],
                      'l7rules': []}
                gone = lb.provisioning_status == 'PENDING_DELETE'

                def put(kind, o, op):
                    if gone or o.provisioning_status == 'PENDING_DELETE':
                        st[kind].append({'id': o.id,
                                         'provisioning_status': 'DELETED',
                                         'operating_status': 'OFFLINE'})
                    elif o.provisioning_status in PENDING:
                        st[kind].append({'id': o.id,
                                         'provisioning_status': 'ACTIVE',
                                         'operating_status':
                                             op if o.enabled else 'OFFLINE'})
                for li in lb.listeners:
                    put('listeners', li, 'ONLINE')
                for x in l7ps:
                    put('l7policies', x, 'ONLINE')
                for r in l7rs:
                    put('l7rules', r, 'ONLINE')
                for p in lb.pools:
                    put('pools', p, 'ONLINE' if (p.listeners or p.members)
                        else 'OFFLINE')
                    for mb in p.members:
                        put('members', mb,
                            'ONLINE' if p.health_monitor else 'NO_MONITOR')
                    if p.health_monitor:
                        put('healthmonitors', p.health_monitor, 'ONLINE')
                if gone:
                    put('loadbalancers', lb, 'OFFLINE')
                else:   # the LB goes back to ACTIVE whatever changed under it
                    st['loadbalancers'].append(
                        {'id': lb.id, 'provisioning_status': 'ACTIVE',
                         'operating_status': 'ONLINE' if lb.enabled else 'OFFLINE'})
                out.append(st)
        return out

    # -- ProviderDriver API (what ovn-octavia-provider implements)
    def create_vip_port(self, loadbalancer_id, project_id, vip_dictionary,
                        additional_vip_dicts=None):
        return self._noop.create_vip_port(loadbalancer_id, project_id,
                                          vip_dictionary, additional_vip_dicts)

    def loadbalancer_create(self, loadbalancer):
        for li in (loadbalancer.listeners if _set(loadbalancer.listeners) else []):
            self._listener(li)
        for p in (loadbalancer.pools if _set(loadbalancer.pools) else []):
            self._pool(p)

    def loadbalancer_delete(self, loadbalancer, cascade=False):
        pass

    def loadbalancer_failover(self, loadbalancer_id):
        _unsupported('OVN provider does not support loadbalancer failover')

    def loadbalancer_update(self, old_loadbalancer, new_loadbalancer):
        pass

    def _listener(self, listener):
        self._protocol(listener.protocol)
        self._cidrs(listener.allowed_cidrs)

    def listener_create(self, listener):
        self._listener(listener)

    def listener_delete(self, listener):
        pass

    def listener_update(self, old_listener, new_listener):
        self._cidrs(new_listener.allowed_cidrs)

    def _pool(self, pool):
        self._protocol(pool.protocol)
        self._algorithm(pool.lb_algorithm)
        if _set(pool.session_persistence):
            self._persistence(pool.session_persistence)
        if _set(pool.healthmonitor) and pool.healthmonitor is not None:
            self._hm(pool.healthmonitor)

    def pool_create(self, pool):
        self._pool(pool)

    def pool_delete(self, pool):
        pass

    def pool_update(self, old_pool, new_pool):
        if _set(new_pool.protocol):
            self._protocol(new_pool.protocol)
        if _set(new_pool.lb_algorithm):
            self._algorithm(new_pool.lb_algorithm)
        if _set(new_pool.session_persistence):
            self._persistence(new_pool.session_persistence)

    def member_create(self, member):
        if self._monitor_opts(member):
            _unsupported('OVN Load Balancer does not support different member '
                         'monitor address or port.')

    def member_delete(self, member):
        pass

    def member_update(self, old_member, new_member):
        if self._monitor_opts(new_member):
            _unsupported('OVN Load Balancer does not support different member '
                         'monitor address or port.')

    def member_batch_update(self, pool_id, members):
        for mb in members:
            if self._monitor_opts(mb):
                _unsupported('OVN provider does not support monitor options')

    def health_monitor_create(self, healthmonitor):
        self._hm(healthmonitor)

    def health_monitor_delete(self, healthmonitor):
        pass

    def health_monitor_update(self, old_healthmonitor, new_healthmonitor):
        pass
    # l7policy_*, l7rule_*, flavor and availability-zone metadata: not
    # implemented by OVN either -> ProviderDriver base -> 501.


class ActiveNoopDriver(OvnEmulationDriver):
    """Accepts everything (like noop_driver) but reports ACTIVE like 'ovn'."""
    provider = 'noop_active'

    def _protocol(self, protocol):
        pass

    _algorithm = _persistence = _cidrs = _protocol

    def _monitor_opts(self, member):
        return False

    def _hm(self, hm, create=True):
        pass

    def loadbalancer_failover(self, loadbalancer_id):
        pass

    def l7policy_create(self, l7policy):
        pass

    l7policy_delete = l7rule_create = l7rule_delete = l7policy_create

    def l7policy_update(self, old, new):
        pass

    l7rule_update = l7policy_update

    def get_supported_flavor_metadata(self):
        return self._noop.get_supported_flavor_metadata()

    def get_supported_availability_zone_metadata(self):
        return self._noop.get_supported_availability_zone_metadata()

    def validate_flavor(self, flavor_metadata):
        return self._noop.validate_flavor(flavor_metadata)

    def validate_availability_zone(self, availability_zone_metadata):
        return self._noop.validate_availability_zone(availability_zone_metadata)
PYEOF

# ------------------------------------------------------------------ 3. config + database
mkdir -p "$DATA"/{etc,log}
cat > "$DATA/etc/octavia.conf" <<EOF
[DEFAULT]
debug = false
log_dir = $DATA/log
transport_url = fake://

[api_settings]
bind_host = 127.0.0.1
bind_port = $PORT
auth_strategy = noauth
enabled_provider_drivers = noop_driver:The No-Op driver.,ovn:Octavia OVN driver.,noop_active:No-Op driver that reports ACTIVE (kuryr reference).
default_provider_driver = $DEFAULT_PROVIDER

[database]
connection = sqlite:///$DATA/octavia.db
# sqlite uses a NullPool, which takes no pool_timeout (Octavia sets 10 by default)
pool_timeout =

[controller_worker]
network_driver = network_noop_driver
compute_driver = compute_noop_driver
amphora_driver = amphora_noop_driver
volume_driver = volume_noop_driver
image_driver = image_noop_driver

[certificates]
cert_manager = noop_cert_manager

[oslo_messaging_notifications]
driver = noop
EOF

cat > "$DATA/initdb.py" <<'PYEOF'
import sys
from octavia.common import config, constants as c
from octavia.db import api as db_api, base_models, models as m
config.init(sys.argv[1:])
base_models.BASE.metadata.create_all(db_api.get_engine())
s = db_api.get_session()
with s.begin():
    if s.query(m.ProvisioningStatus).count():
        sys.exit(0)
    for names, cls in [
            (c.SUPPORTED_PROVISIONING_STATUSES, m.ProvisioningStatus),
            (c.SUPPORTED_HEALTH_MONITOR_TYPES, m.HealthMonitorType),
            (c.SUPPORTED_LB_ALGORITHMS, m.Algorithm),
            (c.SUPPORTED_PROTOCOLS, m.Protocol),
            (c.SUPPORTED_OPERATING_STATUSES, m.OperatingStatus),
            (c.SUPPORTED_SP_TYPES, m.SessionPersistenceType),
            (c.SUPPORTED_AMPHORA_ROLES, m.AmphoraRoles),
            (c.SUPPORTED_LB_TOPOLOGIES, m.LBTopology),
            (c.SUPPORTED_VRRP_AUTH, m.VRRPAuthMethod),
            (c.SUPPORTED_L7RULE_TYPES, m.L7RuleType),
            (c.SUPPORTED_L7RULE_COMPARE_TYPES, m.L7RuleCompareType),
            (c.SUPPORTED_L7POLICY_ACTIONS, m.L7PolicyAction),
            (c.SUPPORTED_CLIENT_AUTH_MODES, m.ClientAuthenticationMode)]:
        for n in names:
            s.add(cls(name=n))
    # the placeholders that the migrations insert for DELETED flavors / AZs
    s.add(m.FlavorProfile(id=c.NIL_UUID, name='DELETED-PLACEHOLDER',
                          provider_name=c.DELETED, flavor_data='{}'))
    s.flush()
    s.add(m.Flavor(id=c.NIL_UUID, flavor_profile_id=c.NIL_UUID,
                   name='DELETED-PLACEHOLDER', enabled=False))
    s.add(m.AvailabilityZoneProfile(id=c.NIL_UUID, name='DELETED-PLACEHOLDER',
                                    provider_name=c.DELETED,
                                    availability_zone_data='{}'))
    s.flush()
    s.add(m.AvailabilityZone(availability_zone_profile_id=c.NIL_UUID,
                             name=c.NIL_UUID, enabled=False))
PYEOF
"$PY" -W ignore "$DATA/initdb.py" --config-file "$DATA/etc/octavia.conf" > "$DATA/log/initdb.log" 2>&1 \
  || { log "database init failed, see $DATA/log/initdb.log"; exit 1; }

# The API as devstack serves it, under /load-balancer, from a threaded wsgiref server
# (octavia-api itself is a single-threaded wsgiref server mounted at /).
cat > "$DATA/serve.py" <<'PYEOF'
"""Octavia's API under /load-balancer on two ports of one process:
  bind_port      auth_strategy noauth   (everyone is admin, no quota checks)
  bind_port + 1  auth_strategy testing  (Octavia's header-trusting mode: X-Project-Id
                 and X-Roles as keystonemiddleware would set them; policies, project
                 scoping and quotas apply as with keystone)
Requests are served one at a time (DB_LOCK), so switching the option is safe."""
import socketserver
import sys
import threading
from wsgiref import simple_server

from oslo_config import cfg
from octavia.api import app as api_app
from kuryr_octavia_ref import DB_LOCK

PREFIX = '/load-balancer'
app = api_app.setup_app(argv=sys.argv)


def mount(strategy):
    def mounted(environ, start_response):
        path = environ.get('PATH_INFO', '')
        if path == PREFIX or path.startswith(PREFIX + '/'):
            environ['SCRIPT_NAME'] = PREFIX
            environ['PATH_INFO'] = path[len(PREFIX):]
            with DB_LOCK:
                cfg.CONF.set_override('auth_strategy', strategy, 'api_settings')
                try:
                    return list(app(environ, start_response))
                finally:
                    cfg.CONF.clear_override('auth_strategy', 'api_settings')
        start_response('404 Not Found', [('Content-Type', 'text/plain')])
        return [b'Not Found\n']
    return mounted


class Server(socketserver.ThreadingMixIn, simple_server.WSGIServer):
    daemon_threads = True


class Handler(simple_server.WSGIRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write('%s\n' % (fmt % args))


host, port = cfg.CONF.api_settings.bind_host, cfg.CONF.api_settings.bind_port
for p, strategy in ((port + 1, 'testing'), (port, 'noauth')):
    srv = simple_server.make_server(host, p, mount(strategy),
                                    server_class=Server, handler_class=Handler)
    if strategy == 'testing':
        threading.Thread(target=srv.serve_forever, daemon=True).start()
srv.serve_forever()
PYEOF

# ------------------------------------------------------------------ 4. processes
cd "$DATA"
setsid "$PY" -W ignore "$DATA/serve.py" --config-file "$DATA/etc/octavia.conf" \
  --log-file "$DATA/log/octavia-api.log" > "$DATA/log/api.out" 2>&1 < /dev/null &
echo $! > "$DATA/api.pid"
for _ in $(seq 1 80); do
  curl -sf -o /dev/null "http://127.0.0.1:$PORT/load-balancer/" && break; sleep 0.25
done
curl -sf -o /dev/null "http://127.0.0.1:$PORT/load-balancer/" \
  || { log "octavia API did not answer, see $DATA/log"; exit 1; }
log "octavia $OCTAVIA_VERSION API at http://127.0.0.1:$PORT/load-balancer (noauth: send X-Project-Id)"
log "  and http://127.0.0.1:$((PORT + 1))/load-balancer (auth_strategy testing: send X-Project-Id and X-Roles)"
exit 0

# The pins this script was tested with (pip freeze of the venv, octavia excluded).
# ---- constraints ----
alembic==1.20.1
amqp==5.4.2
attrs==26.1.0
automaton==3.5.0
autopage==0.6.0
bcrypt==5.0.0
blinker==1.9.0
cachetools==8.0.2
castellan==5.8.0
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
click==8.5.1
cliff==4.17.0
cmd2==4.3.1
cotyledon==2.2.0
cryptography==50.0.2
debtcollector==3.1.0
decorator==5.3.1
distro==1.9.0
dnspython==2.9.2
dogpile.cache==1.5.0
eventlet==0.41.3
fasteners==0.20
Flask==3.1.3
futurist==3.5.0
greenlet==3.5.6
gunicorn==27.0.1
idna==3.20
importlib_metadata==10.2.0
iso8601==2.1.0
itsdangerous==2.2.0
Jinja2==3.1.6
jmespath==1.1.0
jsonpatch==1.48
jsonpointer==3.12
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
keystoneauth1==5.18.1
keystonemiddleware==13.0.1
kombu==5.7.0
lazy-importer==0.1.0
Mako==1.4.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
msgpack==1.2.4
netaddr==1.3.0
networkx==3.6.1
octavia-lib==3.12.0
openstacksdk==4.22.0
os-service-types==1.9.0
oslo.cache==4.3.0
oslo.concurrency==7.6.1
oslo.config==10.7.0
oslo.context==6.5.0
oslo.db==18.1.1
oslo.i18n==6.9.0
oslo.log==8.3.2
oslo.messaging==18.3.1
oslo.metrics==0.17.0
oslo.middleware==8.2.0
oslo.policy==6.0.1
oslo.reports==3.9.0
oslo.serialization==5.11.0
oslo.service==4.8.0
oslo.upgradecheck==2.8.0
oslo.utils==10.2.0
packaging==26.4
Paste==3.10.1
PasteDeploy==3.1.0
pbr==7.1.3
pecan==1.8.0
platformdirs==4.14.9
prettytable==3.19.0
prometheus_client==0.26.0
prompt_toolkit==3.0.53
psutil==7.2.2
pyasn1==0.6.5
pyasn1_modules==0.4.2
pycadf==4.1.0
pycparser==3.12
pydot==4.0.1
Pygments==2.21.0
PyJWT==2.15.1
PyMySQL==1.2.4
pyOpenSSL==26.4.0
pyparsing==3.3.3
pyperclip==1.11.0
python-barbicanclient==7.6.0
python-cinderclient==9.10.0
python-dateutil==4.0.0
python-glanceclient==4.13.0
python-keystoneclient==6.0.0
python-novaclient==18.13.1
PyYAML==6.0.4
referencing==0.37.0
repoze-lru==0.8
requests==2.34.2
rfc3986==2.0.0
rich==15.0.0
rich-argparse==1.8.0
Routes==2.5.1
rpds-py==2026.9.1
setproctitle==1.3.8
simplegeneric==0.8.1
six==1.17.0
SQLAlchemy==2.1.9
SQLAlchemy-Utils==0.43.0
statsd==4.0.1
stevedore==5.10.0
taskflow==6.5.0
tenacity==9.2.1
testresources==2.1.2
testscenarios==0.7.0
typing_extensions==4.16.0
tzdata==2026.6
urllib3==2.8.0
vine==5.1.0
warlock==2.1.0
wcwidth==0.9.4
WebOb==1.8.11
Werkzeug==3.1.9
wrapt==2.5.2
WSME==0.13.0
yappi==1.7.6
zipp==4.1.2
