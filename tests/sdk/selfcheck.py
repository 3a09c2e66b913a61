"""Checks the SDK function servers on their own, without the runtime: starts functions.py and
functions.js, POSTs hand-built ToFunction messages (the SDK's generated protobuf classes)
and checks the FromFunction replies field by field. A developer tool for the test apps that
tests/sdk.rs drives through the runtime.

Usage: target/sdk/venv/bin/python tests/sdk/selfcheck.py   (after tests/sdk/setup.sh)
"""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

from statefun import IntType, StringType
from statefun.request_reply_pb2 import Address, FromFunction, ToFunction, TypedValue

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

INT = "io.statefun.types/int"
STRING = "io.statefun.types/string"
EXPIRE = FromFunction.ExpirationSpec.ExpireMode
MUTATION = FromFunction.PersistedValueMutation.MutationType
# The address a runtime would give a `/v1/call` request; any address works for the SDK.
CALLER = ("statefun.call/reply", "r1")

checks = 0


def check(condition, what, detail=""):
    global checks
    if not condition:
        print(f"FAIL - {what}\n{detail}", flush=True)
        sys.exit(1)
    checks += 1
    print(f"ok - {what}", flush=True)


# -- building requests ----------------------------------------------------------------------


def address(typename, id):
    namespace, _, type = typename.rpartition("/")
    return Address(namespace=namespace, type=type, id=id)


def int_value(n):
    return TypedValue(typename=INT, has_value=True, value=IntType.serializer().serialize(n))


def str_value(text):
    return TypedValue(typename=STRING, has_value=True, value=StringType.serializer().serialize(text))


def to_function(target, id, states, invocations):
    """states: {name: TypedValue or None (registered, no value)}; invocations: [(caller or None, TypedValue)]."""
    request = ToFunction()
    batch = request.invocation
    batch.target.CopyFrom(address(target, id))
    for name, value in states.items():
        state = batch.state.add()
        state.state_name = name
        if value is not None:
            state.state_value.CopyFrom(value)
    for caller, argument in invocations:
        invocation = batch.invocations.add()
        if caller is not None:
            invocation.caller.CopyFrom(address(*caller))
        invocation.argument.CopyFrom(argument)
    return request.SerializeToString()


# -- talking HTTP -----------------------------------------------------------------------------


class Answer:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def from_function(self):
        reply = FromFunction()
        reply.ParseFromString(self.body)
        return reply


def http(method, port, path, body=None, content_type="application/octet-stream"):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, error.read())


def invoke(port, target, id, states, invocations):
    answer = http("POST", port, "/statefun", to_function(target, id, states, invocations))
    check(
        answer.status == 200 and answer.headers.get("Content-Type") == "application/octet-stream",
        f"{target}/{id}: 200 application/octet-stream",
        f"{answer.status} {answer.headers.get('Content-Type')} {answer.body!r}",
    )
    return answer.from_function()


def start(command):
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("ready "):
        process.kill()
        sys.exit(f"{command}: no ready line, got {line!r}")
    return process, int(line.split()[1])


# -- expectations -------------------------------------------------------------------------------


def spec(reply, name):
    return next(value for value in reply.incomplete_invocation_context.missing_values if value.state_name == name)


def mutations(reply):
    """{name: ("MODIFY", typename, bytes) or ("DELETE",)}"""
    out = {}
    for mutation in reply.invocation_result.state_mutations:
        if mutation.mutation_type == MUTATION.MODIFY:
            value = mutation.state_value
            out[mutation.state_name] = ("MODIFY", value.typename, value.value)
        else:
            out[mutation.state_name] = ("DELETE",)
    return out


def messages(reply):
    """[(typename, id, argument typename, argument bytes)]"""
    return [
        (f"{m.target.namespace}/{m.target.type}", m.target.id, m.argument.typename, m.argument.value)
        for m in reply.invocation_result.outgoing_messages
    ]


def int_bytes(n):
    return IntType.serializer().serialize(n)


def str_bytes(text):
    return StringType.serializer().serialize(text)


def python_checks(port):
    # Built-in encodings, as the runtime must produce them (sfixed32 / string in field 1).
    check(int_bytes(1).hex() == "0d01000000", "IntType 1 is 0d 01 00 00 00")
    check(str_bytes("a").hex() == "0a0161", "StringType 'a' is 0a 01 61")

    # test/counter: handshake, then a result.
    reply = invoke(port, "test/counter", "c", {}, [(CALLER, str_value("inc"))])
    check(reply.HasField("incomplete_invocation_context"), "counter without states: incomplete_invocation_context")
    names = [value.state_name for value in reply.incomplete_invocation_context.missing_values]
    check(names == ["count", "recent"], "counter: missing count and recent, in declaration order", names)
    count, recent = spec(reply, "count"), spec(reply, "recent")
    check(
        count.type_typename == INT and count.HasField("expiration_spec") and count.expiration_spec.mode == EXPIRE.NONE,
        "count: int, no expiry (an empty expiration_spec is present: mode NONE)",
        count,
    )
    check(
        recent.type_typename == INT
        and recent.expiration_spec.mode == EXPIRE.AFTER_WRITE
        and recent.expiration_spec.expire_after_millis == 1000,
        "recent: int, AFTER_WRITE 1000 ms",
        recent,
    )
    reply = invoke(port, "test/counter", "c", {"count": None}, [(CALLER, str_value("inc"))])
    names = [value.state_name for value in reply.incomplete_invocation_context.missing_values]
    check(names == ["recent"], "counter with count only: recent is missing", names)

    reply = invoke(port, "test/counter", "c", {"count": None, "recent": None}, [(CALLER, str_value("inc"))])
    check(reply.HasField("invocation_result"), "counter with states: invocation_result")
    check(
        mutations(reply) == {"count": ("MODIFY", INT, int_bytes(1)), "recent": ("MODIFY", INT, int_bytes(1))},
        "counter: MODIFY count=1 recent=1",
        reply,
    )
    check(
        messages(reply) == [(*CALLER, STRING, str_bytes("count=1 recent=1"))],
        "counter: replies 'count=1 recent=1' to the caller",
        reply,
    )
    # A batch of three, one without a caller (as from an ingress), with count=5 and no recent.
    reply = invoke(
        port,
        "test/counter",
        "c",
        {"count": int_value(5), "recent": None},
        [(CALLER, str_value("inc")), (None, str_value("inc")), (CALLER, str_value("inc"))],
    )
    check(
        mutations(reply) == {"count": ("MODIFY", INT, int_bytes(8)), "recent": ("MODIFY", INT, int_bytes(3))},
        "counter batch of 3: one MODIFY each, count=8 recent=3",
        reply,
    )
    check(
        [m[3] for m in messages(reply)] == [str_bytes("count=6 recent=1"), str_bytes("count=8 recent=3")],
        "counter batch: two replies (none for the caller-less invocation)",
        reply,
    )
    # A state value with has_value=false counts as absent.
    reply = invoke(
        port, "test/counter", "c", {"count": TypedValue(typename=INT, has_value=False), "recent": None}, [(None, str_value("inc"))]
    )
    check(mutations(reply)["count"] == ("MODIFY", INT, int_bytes(1)), "has_value=false is absent: count=1", reply)

    # test/ping and test/pong.
    reply = invoke(port, "test/ping", "a", {}, [(CALLER, int_value(41))])
    check([v.state_name for v in reply.incomplete_invocation_context.missing_values] == ["asker"], "ping: asks for asker")
    check(spec(reply, "asker").type_typename == STRING, "asker: string")
    reply = invoke(port, "test/ping", "a", {"asker": None}, [(CALLER, int_value(41))])
    asker = json.dumps(list(CALLER)).encode()
    check(mutations(reply) == {"asker": ("MODIFY", STRING, str_bytes(asker.decode()))}, "ping: stores the asker", reply)
    check(messages(reply) == [("test/pong", "a", INT, int_bytes(41))], "ping: sends 41 to test/pong/a", reply)
    reply = invoke(port, "test/pong", "a", {}, [(("test/ping", "a"), int_value(41))])
    check(reply.HasField("invocation_result"), "pong (no specs): invocation_result at once")
    check(messages(reply) == [("test/ping", "a", INT, int_bytes(42))], "pong: replies 42 to test/ping/a", reply)
    reply = invoke(port, "test/ping", "a", {"asker": str_value(asker.decode())}, [(("test/pong", "a"), int_value(42))])
    check(messages(reply) == [(*CALLER, STRING, str_bytes("pong 42"))], "ping: answers 'pong 42' to the asker", reply)
    check(mutations(reply) == {"asker": ("DELETE",)}, "ping: deletes asker", reply)
    deletion = reply.invocation_result.state_mutations[0]
    check(
        deletion.SerializeToString() == b"\x12\x05asker",
        "DELETE on the wire is only the state name (no mutation_type: DELETE is the enum default; no value)",
        deletion.SerializeToString(),
    )

    # test/timer.
    reply = invoke(port, "test/timer", "t", {"fired": None}, [(CALLER, str_value("arm 300 a")), (CALLER, str_value("cancel b"))])
    delayed = reply.invocation_result.delayed_invocations
    check(len(delayed) == 2, "timer: two delayed invocations", reply)
    arm, cancel = delayed
    check(
        not arm.is_cancellation_request
        and arm.delay_in_ms == 300
        and arm.cancellation_token == "a"
        and (arm.target.namespace, arm.target.type, arm.target.id) == ("test", "timer", "t")
        and arm.argument.typename == STRING
        and arm.argument.value == str_bytes("fire a"),
        "timer: arm 300 a is a delayed 'fire a' to itself, 300 ms, token a",
        arm,
    )
    check(
        cancel.is_cancellation_request and cancel.cancellation_token == "b" and not cancel.HasField("target"),
        "timer: cancel b is a cancellation request with token b",
        cancel,
    )
    check([m[3] for m in messages(reply)] == [str_bytes("armed a"), str_bytes("cancelled b")], "timer: acks", reply)
    reply = invoke(port, "test/timer", "t", {"fired": None}, [(("test/timer", "t"), str_value("fire a"))])
    check(mutations(reply) == {"fired": ("MODIFY", STRING, str_bytes("a"))}, "timer: fire a sets fired='a'", reply)
    check(messages(reply) == [], "timer: fire sends nothing back", reply)
    reply = invoke(port, "test/timer", "t", {"fired": str_value("a")}, [(CALLER, str_value("read"))])
    check(messages(reply) == [(*CALLER, STRING, str_bytes("a"))], "timer: read answers 'a'", reply)
    reply = invoke(port, "test/timer", "u", {"fired": None}, [(CALLER, str_value("read"))])
    check(messages(reply) == [(*CALLER, STRING, str_bytes(""))], "timer: read with nothing fired answers ''", reply)
    answer = http("POST", port, "/statefun", to_function("test/timer", "u", {"fired": None}, [(None, str_value("read"))]))
    check(answer.status == 200 and answer.body == b"", "a batch without effects: 200 with a 0-byte body", answer.body)

    # test/egress, with the three encodings it accepts.
    for label, argument in [
        ("test/Text JSON", TypedValue(typename="test/Text", has_value=True, value=b'"hello"')),
        ("wrapped string", str_value("hello")),
        ("raw bytes of another type", TypedValue(typename="test/Raw", has_value=True, value=b"hello")),
    ]:
        reply = invoke(port, "test/egress", "x", {}, [(CALLER, argument)])
        egresses = reply.invocation_result.outgoing_egresses
        check(len(egresses) == 1, f"egress ({label}): one egress message", reply)
        record = egresses[0]
        check(
            (record.egress_namespace, record.egress_type) == ("io.statefun.playground", "egress")
            and record.argument.typename == "io.statefun.playground/EgressRecord"
            and record.argument.has_value
            and json.loads(record.argument.value) == {"topic": "greetings", "payload": "hello"},
            f"egress ({label}): io.statefun.playground/egress, EgressRecord JSON topic greetings payload hello",
            record,
        )

    # test/flaky and the failing set.
    check(http("POST", port, "/fail/x").status == 200, "POST /fail/x")
    answer = http("POST", port, "/statefun", to_function("test/flaky", "x", {"count": None}, [(CALLER, str_value("inc"))]))
    check(
        answer.status == 500 and answer.headers.get("Retry-After") == "1",
        "flaky/x while failing: 500 with Retry-After: 1",
        f"{answer.status} {dict(answer.headers)}",
    )
    reply = invoke(port, "test/flaky", "y", {}, [(CALLER, str_value("inc"))])
    check(reply.HasField("incomplete_invocation_context"), "flaky/y: handshake as usual")
    reply = invoke(port, "test/flaky", "y", {"count": int_value(4)}, [(CALLER, str_value("inc"))])
    check(messages(reply) == [(*CALLER, STRING, str_bytes("count=5"))], "flaky/y: count=5", reply)
    check(http("DELETE", port, "/fail/x").status == 200, "DELETE /fail/x")
    reply = invoke(port, "test/flaky", "x", {"count": None}, [(CALLER, str_value("inc"))])
    check(messages(reply) == [(*CALLER, STRING, str_bytes("count=1"))], "flaky/x healed: count=1", reply)

    # An SDK error (unknown function type) is a 500.
    answer = http("POST", port, "/statefun", to_function("test/nope", "n", {}, [(None, str_value("x"))]))
    check(answer.status == 500, "unknown function type: 500", answer.status)

    # /stats
    answer = http("GET", port, "/stats")
    stats = json.loads(answer.body)
    check(
        stats["handshakes"] == {"test/counter": 2, "test/ping": 1, "test/flaky": 1},
        "stats: handshakes per type",
        stats,
    )
    check(
        stats["requests"]
        == {"test/counter": 5, "test/ping": 3, "test/pong": 1, "test/timer": 5, "test/egress": 3, "test/flaky": 4, "test/nope": 1},
        "stats: requests per type",
        stats,
    )
    check(stats["invocations"]["test/counter"] == 7 and stats["invocations"]["test/timer"] == 6, "stats: invocations", stats)
    check(stats["failures"] == {"test/flaky": 1, "test/nope": 1}, "stats: failures", stats)


def js_checks(port):
    reply = invoke(port, "test/jscounter", "j", {}, [(CALLER, str_value("inc"))])
    check(reply.HasField("incomplete_invocation_context"), "jscounter without state: incomplete_invocation_context")
    count = spec(reply, "count")
    check(
        count.type_typename == INT and not count.HasField("expiration_spec"),
        "jscounter: count int, and no expiration_spec at all (the Python SDK sends mode NONE)",
        count,
    )
    reply = invoke(port, "test/jscounter", "j", {"count": None}, [(CALLER, str_value("inc"))])
    check(mutations(reply) == {"count": ("MODIFY", INT, int_bytes(1))}, "jscounter: MODIFY count=1", reply)
    check(messages(reply) == [(*CALLER, STRING, str_bytes("count=1"))], "jscounter: replies 'count=1'", reply)
    reply = invoke(port, "test/jscounter", "j", {"count": int_value(2)}, [(CALLER, str_value("inc")), (None, str_value("inc"))])
    check(mutations(reply) == {"count": ("MODIFY", INT, int_bytes(4))}, "jscounter batch of 2: count=4", reply)
    check(messages(reply) == [(*CALLER, STRING, str_bytes("count=3"))], "jscounter batch: one reply", reply)
    answer = http("POST", port, "/statefun", to_function("test/jscounter", "j", {"count": None}, [(None, str_value("inc"))]))
    check(answer.body.hex().startswith("a206"), "JS SDK always sets invocation_result (a2 06 ...)", answer.body.hex())
    answer = http("POST", port, "/anything/else", to_function("test/jscounter", "j", {"count": None}, [(None, str_value("x"))]))
    check(answer.status == 200, "JS SDK serves any path", answer.status)
    answer = http("POST", port, "/statefun", b"")
    check(
        answer.status == 500 and answer.headers.get("Content-Type") == "application/octet-stream" and answer.body == b"",
        "JS SDK: an empty request is a 500 with an empty octet-stream body",
        f"{answer.status} {answer.headers.get('Content-Type')} {answer.body!r}",
    )


def main():
    venv_python = os.path.join(ROOT, "target", "sdk", "venv", "bin", "python")
    python = venv_python if os.path.exists(venv_python) else sys.executable
    servers = []
    try:
        servers.append(start([python, os.path.join(HERE, "functions.py"), "0"]))
        servers.append(start(["node", os.path.join(HERE, "functions.js"), "0"]))
        print(f"# functions.py on port {servers[0][1]}, functions.js on port {servers[1][1]}", flush=True)
        python_checks(servers[0][1])
        js_checks(servers[1][1])
    finally:
        for process, _ in servers:
            process.kill()
            process.wait()
    print(f"selfcheck: all {checks} checks passed")


if __name__ == "__main__":
    main()
