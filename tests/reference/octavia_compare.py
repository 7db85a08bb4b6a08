#!/usr/bin/env python3
"""Run one fixed sequence of Octavia v2 API requests against the real Octavia
(scripts/reference-octavia.sh) and against kuryr, and print, per request, how the
two answers differ: status code, JSON keys, values.

Ids, timestamps, project ids, VIP addresses and base URLs are normalized first: a
uuid becomes the name of the object it was saved as (<lb>, <pool>, ...) or <uuid>,
a timestamp in Octavia's format (2026-12-03T21:43:38.002146) becomes <ts> (any
other format stays visible), the project id of each side becomes <project>.

    scripts/reference-octavia.sh start
    python3 tests/reference/octavia_compare.py --only-reference
    python3 tests/reference/octavia_compare.py \\
        --kuryr http://127.0.0.1:9696/load-balancer \\
        --kuryr-header 'X-Auth-Token: ...' --vip-subnet-id SUBNET_ON_KURYR

The reference runs with auth_strategy noauth: its project comes from X-Project-Id.
Only the standard library and requests are needed. Exit status 1 if anything
differs (or, with --only-reference, if a status code is not the expected one).
"""
import argparse
import json
import re
import sys
import time
import uuid

import requests

UUID = re.compile(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}')
OCTAVIA_TS = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?$')
NOWHERE = '99999999-9999-9999-9999-999999999999'
LB = '/v2/lbaas/loadbalancers'
LI = '/v2/lbaas/listeners'
PO = '/v2/lbaas/pools'
HM = '/v2/lbaas/healthmonitors'


def steps(a):
    """(name, method, path, body, expected status, {var: key of the new id}, wait)"""
    name = 'cmp-' + uuid.uuid4().hex[:8]     # this run's LB, among whatever else exists
    vip = {'vip_subnet_id': a.vip_subnet_id}
    if a.provider:
        vip['provider'] = a.provider
    tcp = {'protocol': 'TCP', 'protocol_port': 80}
    return [
        ('versions', 'GET', '/', None, 200, {}, False),
        ('providers', 'GET', '/v2/lbaas/providers', None, 200, {}, False),
        ('lb create', 'POST', LB, {'loadbalancer': dict(vip, name=name, description='d', tags=['a', 'b'])},
         201, {'lb': 'loadbalancer'}, True),
        ('lb show', 'GET', LB + '/{lb}', None, 200, {}, False),
        ('lb list by name', 'GET', LB + '?name=' + name, None, 200, {}, False),
        ('lb list fields', 'GET', LB + '?name=%s&fields=id&fields=name&fields=tags' % name, None, 200, {}, False),
        ('lb update', 'PUT', LB + '/{lb}', {'loadbalancer': {'name': name + 'b', 'tags': ['c']}}, 200, {}, True),
        ('lb update immutable attr', 'PUT', LB + '/{lb}', {'loadbalancer': {'vip_subnet_id': a.vip_subnet_id}},
         400, {}, False),
        ('lb create no vip', 'POST', LB, {'loadbalancer': {'name': 'x'}}, 400, {}, False),
        ('lb create unknown attr', 'POST', LB, {'loadbalancer': dict(vip, bogus=1)}, 400, {}, False),
        ('lb create bad uuid', 'POST', LB, {'loadbalancer': {'vip_subnet_id': 'nope'}}, 400, {}, False),
        ('lb create invalid json', 'POST', LB, '{nope', 400, {}, False),
        ('lb show 404', 'GET', LB + '/' + NOWHERE, None, 404, {}, False),
        ('listener TCP', 'POST', LI, {'listener': dict(tcp, loadbalancer_id='{lb}', name='cmp-tcp')},
         201, {'listener': 'listener'}, True),
        ('listener show', 'GET', LI + '/{listener}', None, 200, {}, False),
        ('listener UDP', 'POST', LI, {'listener': {'loadbalancer_id': '{lb}', 'protocol': 'UDP',
                                                   'protocol_port': 53}}, 201, {'listener_udp': 'listener'}, True),
        ('listener duplicate port', 'POST', LI, {'listener': dict(tcp, loadbalancer_id='{lb}')}, 409, {}, False),
        ('listener HTTP (ovn: 501)', 'POST', LI, {'listener': {'loadbalancer_id': '{lb}', 'protocol': 'HTTP',
                                                               'protocol_port': 8080}}, 501, {}, False),
        ('listener port 0', 'POST', LI, {'listener': {'loadbalancer_id': '{lb}', 'protocol': 'TCP',
                                                      'protocol_port': 0}}, 400, {}, False),
        ('listener bad protocol', 'POST', LI, {'listener': {'loadbalancer_id': '{lb}', 'protocol': 'FTP',
                                                            'protocol_port': 21}}, 400, {}, False),
        ('listener update', 'PUT', LI + '/{listener}', {'listener': {'connection_limit': 100,
                                                                     'timeout_client_data': 1000}}, 200, {}, True),
        ('listener stats', 'GET', LI + '/{listener}/stats', None, 200, {}, False),
        ('pool on listener', 'POST', PO, {'pool': {'listener_id': '{listener}', 'protocol': 'TCP',
                                                   'lb_algorithm': 'SOURCE_IP_PORT', 'name': 'cmp-pool'}},
         201, {'pool': 'pool'}, True),
        ('pool on lb, SOURCE_IP + persistence', 'POST', PO, {'pool': {
            'loadbalancer_id': '{lb}', 'protocol': 'UDP', 'lb_algorithm': 'SOURCE_IP',
            'session_persistence': {'type': 'SOURCE_IP'}}}, 201, {'pool_udp': 'pool'}, True),
        ('pool show', 'GET', PO + '/{pool}', None, 200, {}, False),
        ('pool ROUND_ROBIN (ovn: 501)', 'POST', PO, {'pool': {'loadbalancer_id': '{lb}', 'protocol': 'TCP',
                                                              'lb_algorithm': 'ROUND_ROBIN'}}, 501, {}, False),
        ('pool bad algorithm', 'POST', PO, {'pool': {'loadbalancer_id': '{lb}', 'protocol': 'TCP',
                                                     'lb_algorithm': 'BOGUS'}}, 400, {}, False),
        ('pool protocol mismatch', 'POST', PO, {'pool': {'listener_id': '{listener_udp}', 'protocol': 'TCP',
                                                         'lb_algorithm': 'SOURCE_IP'}}, 400, {}, False),
        ('listener already has pool', 'POST', PO, {'pool': {'listener_id': '{listener}', 'protocol': 'TCP',
                                                            'lb_algorithm': 'SOURCE_IP'}}, 409, {}, False),
        ('member create', 'POST', PO + '/{pool}/members', {'member': {'address': '10.0.0.5', 'protocol_port': 8080}},
         201, {'member': 'member'}, True),
        ('member show', 'GET', PO + '/{pool}/members/{member}', None, 200, {}, False),
        ('member duplicate', 'POST', PO + '/{pool}/members', {'member': {'address': '10.0.0.5',
                                                                         'protocol_port': 8080}}, 409, {}, False),
        ('member update', 'PUT', PO + '/{pool}/members/{member}', {'member': {'weight': 5, 'name': 'm'}},
         200, {}, True),
        ('members batch', 'PUT', PO + '/{pool}/members', {'members': [
            {'address': '10.0.0.5', 'protocol_port': 8080, 'weight': 3},
            {'address': '10.0.0.6', 'protocol_port': 8080}]}, 202, {}, True),
        ('members list', 'GET', PO + '/{pool}/members?sort=address:asc', None, 200, {}, False),
        ('member 404 (bad pool)', 'GET', PO + '/' + NOWHERE + '/members', None, 404, {}, False),
        ('hm PING (ovn: 501)', 'POST', HM, {'healthmonitor': {'pool_id': '{pool}', 'type': 'PING', 'delay': 5,
                                                              'timeout': 3, 'max_retries': 3}}, 501, {}, False),
        ('hm PING on UDP pool', 'POST', HM, {'healthmonitor': {'pool_id': '{pool_udp}', 'type': 'PING', 'delay': 5,
                                                               'timeout': 3, 'max_retries': 3}}, 400, {}, False),
        ('hm TCP', 'POST', HM, {'healthmonitor': {'pool_id': '{pool}', 'type': 'TCP', 'delay': 5, 'timeout': 3,
                                                  'max_retries': 3}}, 201, {'hm': 'healthmonitor'}, True),
        ('hm show', 'GET', HM + '/{hm}', None, 200, {}, False),
        ('hm second on pool', 'POST', HM, {'healthmonitor': {'pool_id': '{pool}', 'type': 'TCP', 'delay': 5,
                                                             'timeout': 3, 'max_retries': 3}}, 409, {}, False),
        ('hm UDP-CONNECT delay 1', 'POST', HM, {'healthmonitor': {'pool_id': '{pool_udp}', 'type': 'UDP-CONNECT',
                                                                  'delay': 1, 'timeout': 1, 'max_retries': 3}},
         400, {}, False),
        ('hm update', 'PUT', HM + '/{hm}', {'healthmonitor': {'delay': 7, 'max_retries_down': 5}}, 200, {}, True),
        ('lb status tree', 'GET', LB + '/{lb}/status', None, 200, {}, False),
        ('lb stats', 'GET', LB + '/{lb}/stats', None, 200, {}, False),
        ('lb failover (ovn: 501)', 'PUT', LB + '/{lb}/failover', None, 501, {}, False),
        ('lb list limit 1', 'GET', LB + '?limit=1&fields=id&name=' + name + 'b', None, 200, {}, False),
        ('lb list bad sort key', 'GET', LB + '?sort=bogus:asc', None, 400, {}, False),
        ('quota defaults', 'GET', '/v2/lbaas/quotas/defaults', None, 200, {}, False),
        ('lb delete with children', 'DELETE', LB + '/{lb}', None, 400, {}, False),
        ('pool delete', 'DELETE', PO + '/{pool_udp}', None, 204, {}, True),
        ('lb cascade delete', 'DELETE', LB + '/{lb}?cascade=true', None, 204, {}, True),
        ('lb show after delete', 'GET', LB + '/{lb}', None, 404, {}, False),
    ]


class Side:
    def __init__(self, name, base, headers):
        self.name, self.base = name, base.rstrip('/')
        self.s = requests.Session()
        self.s.headers.update(headers)
        self.ids = {}        # uuid -> label
        self.vars = {}       # label -> uuid
        self.project = None

    def call(self, method, path, body):
        try:
            path = path.format(**self.vars)
        except KeyError as e:
            # An earlier request made nothing on this side (it refused or differed).
            return None, {'skipped': f'no {e.args[0]} on this side'}, ''
        if isinstance(body, str):
            data = body              # sent as is (invalid JSON on purpose)
        else:
            data = json.dumps(fill(body, self.vars)) if body is not None else None
        h = {'Content-Type': 'application/json'} if data is not None else {}
        r = self.s.request(method, self.base + path, data=data, headers=h, timeout=60)
        try:
            j = r.json()
        except ValueError:
            j = None
        return r.status_code, j, r.text

    def save(self, label, j, key):
        uid = j[key]['id']
        self.vars[label], self.ids[uid] = uid, '<%s>' % label
        self.project = self.project or j[key].get('project_id')

    def wait_idle(self, timeout=60):
        """Until the LB is no longer PENDING_* (or gone)."""
        if 'lb' not in self.vars:
            return
        end = time.time() + timeout
        while time.time() < end:
            c, j, _ = self.call('GET', LB + '/{lb}', None)
            if c == 404 or not j['loadbalancer']['provisioning_status'].startswith('PENDING'):
                return
            time.sleep(0.3)
        print('  [%s] LB still PENDING after %ss' % (self.name, timeout))

    def norm(self, v, key=None):
        if isinstance(v, dict):
            return {k: self.norm(x, k) for k, x in v.items()}
        if isinstance(v, list):
            return [self.norm(x) for x in v]
        if not isinstance(v, str):
            return v
        if key in ('vip_address',):
            return '<vip>'
        if self.project and v == self.project:
            return '<project>'
        if OCTAVIA_TS.match(v):
            return '<ts>'
        v = v.replace(self.base, '<base>')
        return UUID.sub(lambda m: self.ids.get(m.group(0), '<uuid>'), v)


def fill(body, vars_):
    if isinstance(body, dict):
        return {k: fill(v, vars_) for k, v in body.items()}
    if isinstance(body, list):
        return [fill(v, vars_) for v in body]
    if isinstance(body, str) and body.startswith('{') and body.endswith('}'):
        return vars_.get(body[1:-1], body)
    return body


def diff(a, b, path='$'):
    """Differences between normalized JSON a (reference) and b (kuryr)."""
    out = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) - set(b)):
            out.append('%s.%s: only in reference (%s)' % (path, k, json.dumps(a[k])))
        for k in sorted(set(b) - set(a)):
            out.append('%s.%s: only in kuryr (%s)' % (path, k, json.dumps(b[k])))
        for k in sorted(set(a) & set(b)):
            out += diff(a[k], b[k], '%s.%s' % (path, k))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            out += diff(x, y, '%s[%d]' % (path, i))
    elif a != b:
        out.append('%s: reference %s, kuryr %s' % (path, json.dumps(a), json.dumps(b)))
    return out


def headers(pairs):
    return dict(p.split(':', 1) for p in pairs) if pairs else {}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--reference', default='http://127.0.0.1:19876/load-balancer')
    p.add_argument('--project', default='kuryr-compare', help="the reference's X-Project-Id")
    p.add_argument('--kuryr', help="kuryr's Octavia base URL, e.g. http://127.0.0.1:9696/load-balancer")
    p.add_argument('--kuryr-header', action='append', default=[], help="'Name: value' for kuryr (repeatable)")
    p.add_argument('--only-reference', action='store_true')
    p.add_argument('--vip-subnet-id', default='11111111-1111-1111-1111-111111111111',
                   help='a subnet that exists on kuryr (the reference accepts any uuid)')
    p.add_argument('--provider', help="put 'provider' in the LB create body")
    p.add_argument('-v', '--verbose', action='store_true', help='print the normalized bodies')
    a = p.parse_args()
    if not a.only_reference and not a.kuryr:
        p.error('give --kuryr URL or --only-reference')

    sides = [Side('reference', a.reference, {'X-Project-Id': a.project})]
    if not a.only_reference:
        sides.append(Side('kuryr', a.kuryr, {k.strip(): v.strip() for k, v in
                                             headers(a.kuryr_header).items()}))
    for s in sides:
        s.ids[a.vip_subnet_id] = '<vip_subnet_id>'
        s.ids[NOWHERE] = '<nowhere>'

    same = different = 0
    for name, method, path, body, expect, save, wait in steps(a):
        res = []
        for s in sides:
            code, j, text = s.call(method, path, body)
            for label, key in save.items():
                if code is not None and code < 300 and j:
                    s.save(label, j, key)
            if wait:
                s.wait_idle()
            res.append((code, s.norm(j) if j is not None else text.strip()[:200]))
        (rc, rj) = res[0]
        problems = []
        if rc != expect:
            problems.append('reference answered %s, expected %s' % (rc, expect))
        if len(res) == 2:
            kc, kj = res[1]
            if kc != rc:
                problems.append('status: reference %s, kuryr %s' % (rc, kc))
            problems += diff(rj, kj)
        print('%-4s %-38s %s %s -> %s' % ('ok' if not problems else 'DIFF', name, method, path,
                                          '/'.join(str(c) for c, _ in res)))
        for pr in problems:
            print('       ' + pr)
        if a.verbose:
            for s, (c, j) in zip(sides, res):
                print('       %s: %s' % (s.name, json.dumps(j)[:2000]))
        same, different = (same + 1, different) if not problems else (same, different + 1)
    print('octavia_compare: %d same, %d different' % (same, different))
    return 1 if different else 0


if __name__ == '__main__':
    sys.exit(main())
