"""One Redis connection that is written to without waiting for the replies.

The agent's relay pushes each decode step's output and goes back to waiting
for the next step; it reads Redis's replies to a push just before it writes
the next one (by then they wait in the socket's buffer, and the read does not
sleep) or when it has had nothing to push for a moment.  Waiting for each
reply as it came was a second sleep and wake-up of the relay thread per
token, and on a VM each costs as much CPU as the push itself.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.exceptions import ResponseError


class PushConnection:
    """A connection taken from ``client``'s pool and held, written to with
    ``write`` and its replies read with ``read_owed``.

    Not thread-safe: the caller writes and reads under one lock, so that the
    replies are read in the order their commands went out.  A connection
    that fails, on a write or a read, is dropped (what Redis owed on it is
    gone with it) and the next write takes a new one from the pool; a
    Sentinel client's pool asks the sentinel for the master then.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        # A redis.connection.Connection, whose methods are not typed.
        self._connection: Any = None
        # Replies Redis owes for the commands written so far.
        self.owed = 0

    def write(self, commands: list[tuple[Any, ...]]) -> None:
        """Send ``commands`` in one write, without reading their replies.

        The replies owed before must have been read (``read_owed``): the
        connection PINGs Redis before a write after a quiet while (its
        ``health_check_interval``) and would take an owed reply for the PONG.
        """
        assert self.owed == 0, "replies owed before a write"
        try:
            if self._connection is None:
                self._connection = self.client.connection_pool.get_connection()
            connection = self._connection
            if len(commands) == 1:
                connection.send_packed_command(connection.pack_command(*commands[0]))
            else:
                connection.send_packed_command(connection.pack_commands(commands))
        except Exception:
            self.drop()
            raise
        self.owed = len(commands)

    def read_owed(self) -> None:
        """Read every reply owed.  Raises the first error reply once all are
        read (the connection stays: its replies are in step), or what made
        the connection fail (then it is dropped, and the replies with it)."""
        owed, self.owed = self.owed, 0
        if owed == 0:
            return
        assert self._connection is not None
        refused: ResponseError | None = None
        try:
            for _ in range(owed):
                try:
                    self._connection.read_response()
                except ResponseError as error:
                    refused = refused or error
        except Exception:
            self.drop()
            raise
        if refused is not None:
            raise refused

    def drop(self) -> None:
        """Close the connection and give it back to the pool."""
        connection, self._connection = self._connection, None
        self.owed = 0
        if connection is not None:
            connection.disconnect()
            self.client.connection_pool.release(connection)

    def close(self) -> None:
        """Give the connection back and close the client.  Replies still owed
        are not read: the caller reads them first if it must know."""
        if self.owed:
            # Unread replies must not reach the pool's next user.
            self.drop()
        elif self._connection is not None:
            self.client.connection_pool.release(self._connection)
            self._connection = None
        self.client.close()
