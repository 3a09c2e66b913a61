"""Remote functions written with the official StateFun Python SDK, for tests/sdk.rs.

Usage: python functions.py PORT   (PORT 0 takes a free port)

Prints `ready <port>` on stdout once it listens. Serves:
  POST   /statefun    the SDK's request-reply endpoint (all functions below, namespace `test`)
  POST   /fail/{id}   from now on test/flaky/{id} answers 500 with `Retry-After: 1`
  DELETE /fail/{id}   test/flaky/{id} works again
  GET    /stats       JSON {"handshakes": {type: n}, "requests": {...}, "invocations": {...},
                      "failures": {...}} counted per function type since start

Functions reply to their caller (when there is one) with a string; the runtime's `/v1/call`
returns that string.
"""

import asyncio
import json
import sys
from collections import Counter
from datetime import timedelta

from aiohttp import web
from statefun import (
    Context,
    IntType,
    Message,
    RequestReplyHandler,
    StatefulFunctions,
    StringType,
    ValueSpec,
    egress_message_builder,
    make_json_type,
    message_builder,
)
from statefun.request_reply_pb2 import FromFunction, ToFunction

functions = StatefulFunctions()

# The playground egress accepts only this typename: JSON {"topic": ..., "payload": ...}.
EGRESS_RECORD_TYPE = make_json_type(typename="io.statefun.playground/EgressRecord")
# The playground egress's identity (egress namespace / egress type).
PLAYGROUND_EGRESS = "io.statefun.playground/egress"
# A JSON string: what the playground ingress can carry (it passes the raw body with the
# Content-Type's typename, so `io.statefun.types/string` would not be wrapper-encoded).
TEXT_TYPE = make_json_type(typename="test/Text")


def reply(ctx: Context, text: str):
    """Sends `text` to the caller, if the message came from one."""
    caller = ctx.caller
    if caller is not None:
        ctx.send(message_builder(target_typename=caller.typename, target_id=caller.id, str_value=text))


def text_of(message: Message) -> str:
    """The message as text, whatever way it was sent: a string, a test/Text JSON string, raw bytes."""
    if message.is_string():
        return message.as_string() or ""
    if message.is_type(TEXT_TYPE):
        return message.as_type(TEXT_TYPE)
    return (message.raw_value() or b"").decode("utf-8")


@functions.bind(
    typename="test/counter",
    specs=[
        ValueSpec(name="count", type=IntType),
        ValueSpec(name="recent", type=IntType, expire_after_write=timedelta(seconds=1)),
    ],
)
async def counter(ctx: Context, message: Message):
    count = (ctx.storage.count or 0) + 1
    recent = (ctx.storage.recent or 0) + 1
    ctx.storage.count = count
    ctx.storage.recent = recent
    reply(ctx, f"count={count} recent={recent}")


@functions.bind(typename="test/ping", specs=[ValueSpec(name="asker", type=StringType)])
async def ping(ctx: Context, message: Message):
    n = message.as_int()
    caller = ctx.caller
    if caller is not None and caller.typename == "test/pong":
        asker = ctx.storage.asker
        if asker:
            typename, id = json.loads(asker)
            ctx.send(message_builder(target_typename=typename, target_id=id, str_value=f"pong {n}"))
        del ctx.storage.asker
        return
    if caller is not None:
        ctx.storage.asker = json.dumps([caller.typename, caller.id])
    ctx.send(message_builder(target_typename="test/pong", target_id=ctx.address.id, int_value=n))


@functions.bind(typename="test/pong")
async def pong(ctx: Context, message: Message):
    reply_to = ctx.caller
    if reply_to is not None:
        ctx.send(message_builder(target_typename=reply_to.typename, target_id=reply_to.id, int_value=message.as_int() + 1))


@functions.bind(typename="test/timer", specs=[ValueSpec(name="fired", type=StringType)])
async def timer(ctx: Context, message: Message):
    words = text_of(message).split()
    if words[:1] == ["arm"] and len(words) == 3:
        ms, token = int(words[1]), words[2]
        fire = message_builder(target_typename="test/timer", target_id=ctx.address.id, str_value=f"fire {token}")
        ctx.send_after(timedelta(milliseconds=ms), fire, cancellation_token=token)
        reply(ctx, f"armed {token}")
    elif words[:1] == ["cancel"] and len(words) == 2:
        ctx.cancel_delayed_message(words[1])
        reply(ctx, f"cancelled {words[1]}")
    elif words[:1] == ["fire"] and len(words) == 2:
        # The caller of a delayed message is this function itself: no reply.
        ctx.storage.fired = (ctx.storage.fired or "") + words[1]
    elif words == ["read"]:
        reply(ctx, ctx.storage.fired or "")
    else:
        raise ValueError(f"test/timer: unknown command {words!r}")


@functions.bind(typename="test/egress")
async def egress(ctx: Context, message: Message):
    text = text_of(message)
    record = {"topic": "greetings", "payload": text}
    ctx.send_egress(
        egress_message_builder(target_typename=PLAYGROUND_EGRESS, value=record, value_type=EGRESS_RECORD_TYPE)
    )
    reply(ctx, "sent")


@functions.bind(typename="test/flaky", specs=[ValueSpec(name="count", type=IntType)])
async def flaky(ctx: Context, message: Message):
    count = (ctx.storage.count or 0) + 1
    ctx.storage.count = count
    reply(ctx, f"count={count}")


handler = RequestReplyHandler(functions)
failing = set()  # ids of test/flaky that answer 500
stats = {"handshakes": Counter(), "requests": Counter(), "invocations": Counter(), "failures": Counter()}


async def handle(request: web.Request) -> web.Response:
    body = await request.read()
    to_function = ToFunction()
    to_function.ParseFromString(body)
    target = to_function.invocation.target
    typename = f"{target.namespace}/{target.type}"
    stats["requests"][typename] += 1
    stats["invocations"][typename] += len(to_function.invocation.invocations)
    if typename == "test/flaky" and target.id in failing:
        stats["failures"][typename] += 1
        return web.Response(status=500, headers={"Retry-After": "1"}, text=f"test/flaky/{target.id} is set to fail\n")
    try:
        answer = await handler.handle_async(body)
    except Exception as error:  # The SDK's own errors: let the runtime see a 500, as aiohttp would.
        stats["failures"][typename] += 1
        print(f"functions.py: {typename}/{target.id}: {error!r}", file=sys.stderr, flush=True)
        return web.Response(status=500, text=f"{error!r}\n")
    from_function = FromFunction()
    from_function.ParseFromString(answer)
    if from_function.HasField("incomplete_invocation_context"):
        stats["handshakes"][typename] += 1
    return web.Response(body=answer, content_type="application/octet-stream")


async def fail(request: web.Request) -> web.Response:
    failing.add(request.match_info["id"])
    return web.Response(text="failing\n")


async def heal(request: web.Request) -> web.Response:
    failing.discard(request.match_info["id"])
    return web.Response(text="healed\n")


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response({name: dict(counts) for name, counts in stats.items()})


async def serve(port: int):
    app = web.Application()
    app.add_routes(
        [
            web.post("/statefun", handle),
            web.post("/fail/{id}", fail),
            web.delete("/fail/{id}", heal),
            web.get("/stats", get_stats),
        ]
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]
    print(f"ready {bound}", flush=True)
    try:
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python functions.py PORT")
    try:
        asyncio.run(serve(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
