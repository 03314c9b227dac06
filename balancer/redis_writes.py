"""Redis commands written without a task of their own.

redis-py's asyncio connections (ours, the channel layer's, Sentinel's) send
each command under ``asyncio.wait_for`` when ``socket_timeout`` is set, as it
is for every client here (``settings.REDIS_OPTIONS``).  On Python 3.11
``wait_for`` runs what it times in a new task: each command then creates a
task, and the coroutine that sent it gives up the event loop twice before its
bytes even leave (the task starts on the loop's next turn, and its end wakes
the sender on the one after).  Under load each of those turns also runs
whatever else is ready, so a slot claim waited for other requests' work on
its way out, not only on the way back.

A write to a connected socket does not wait, though: the transport hands the
bytes to the kernel or buffers them.  The only wait is ``drain`` when the
transport holds more than its high-water mark (a Redis that stopped
reading), and that is what the timeout is for.  So ``install`` makes the
write happen at once, and times the drain only when bytes are left waiting;
the errors are redis-py's own: ``TimeoutError("Timeout writing to socket")``,
``ConnectionError`` for a lost connection, and the connection dropped either
way.

Installed for every process of the platform by ``BalancerConfig.ready``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# redis-py's own write: still taken by a connection not yet open, or without
# a socket timeout.
redis_py_send = AbstractConnection.send_packed_command


async def send_packed_command(
    self: Any, command: bytes | str | Iterable[bytes], check_health: bool = True
) -> None:
    """``AbstractConnection.send_packed_command`` without the task per write."""
    if not self.socket_timeout or not self.is_connected:
        # Nothing to gain (no timeout means no task), or a connection to
        # open first: redis-py's own path.
        await redis_py_send(self, command, check_health)
        return
    if check_health:
        await self.check_health()
    if isinstance(command, str):
        command = command.encode()
    if isinstance(command, bytes):
        command = [command]
    writer = self._writer
    try:
        writer.writelines(command)
        if writer.transport.get_write_buffer_size():
            # Bytes the kernel did not take yet: Redis may have stopped
            # reading, so this wait is timed.
            await asyncio.wait_for(writer.drain(), self.socket_timeout)
        else:
            # Returns at once; raises if the connection was lost.
            await writer.drain()
    except TimeoutError:
        await self.disconnect(nowait=True)
        raise RedisTimeoutError("Timeout writing to socket") from None
    except OSError as error:
        await self.disconnect(nowait=True)
        raise RedisConnectionError(f"Error while writing to socket: {error}") from error
    except BaseException:
        # Part of the command may have gone: the connection cannot be reused.
        await self.disconnect(nowait=True)
        raise


def install() -> None:
    """Every asyncio Redis connection of this process writes this way."""
    AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]


def installed() -> bool:
    return AbstractConnection.send_packed_command is send_packed_command
