#!/usr/bin/env python3
"""An untrusted machine on a pair's segment, for tests/ha_attacks.rs.

Runs inside the setup's network namespace (`ip netns exec`), where the
segments are the bridges `fe` and `repl`. It sees and sends raw Ethernet
frames, so it can forge any source address and replay captured frames
byte for byte.

  capture IFACE SECONDS OUT     UDP frames seen on IFACE, one JSON object a line
  inject IFACE IN               sends the frames IN describes (one JSON a line):
                                {"frame": hex} as is, or {"src_mac", "dst_mac",
                                "src_ip", "dst_ip", "sport", "dport", "payload"}
  stream ADDRESS PORT HEX       connects, sends HEX, reads until the peer closes
                                (at most 10 s); prints what came back as JSON
  stream-handshake ADDRESS PORT connects as node a with a wrong key: sends a
                                challenge, reads the response, sends a made-up
                                finish; prints what happened as JSON
"""

import json
import os
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1


def mac_text(raw):
    return ":".join(f"{b:02x}" for b in raw)


def mac_bytes(text):
    return bytes(int(x, 16) for x in text.split(":"))


def open_packet_socket(iface):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    index = socket.if_nametoindex(iface)
    mreq = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
    s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    return s


def capture(iface, seconds, out):
    s = open_packet_socket(iface)
    s.settimeout(0.2)
    deadline = time.monotonic() + seconds
    seen = set()
    with open(out, "w") as f:
        while time.monotonic() < deadline:
            try:
                frame, meta = s.recvfrom(65535)
            except socket.timeout:
                continue
            # meta[2]: packet type; a frame we send out is also seen as
            # outgoing: keep each distinct frame once.
            if len(frame) < 42 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] != 17:
                continue
            udp = ip[ihl:]
            sport, dport = struct.unpack("!HH", udp[:4])
            if frame in seen:
                continue
            seen.add(frame)
            f.write(json.dumps({
                "frame": frame.hex(),
                "src_mac": mac_text(frame[6:12]),
                "dst_mac": mac_text(frame[0:6]),
                "src_ip": socket.inet_ntoa(ip[12:16]),
                "dst_ip": socket.inet_ntoa(ip[16:20]),
                "sport": sport,
                "dport": dport,
                "payload": bytes(udp[8:]).hex(),
            }) + "\n")


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_frame(d):
    payload = bytes.fromhex(d["payload"])
    src = socket.inet_aton(d["src_ip"])
    dst = socket.inet_aton(d["dst_ip"])
    udp_len = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", d["sport"], d["dport"], udp_len, 0) + payload
    udp_sum = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", udp_sum) + udp[8:]
    ident = int.from_bytes(os.urandom(2), "big")
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, ident, 0x4000, 64, 17, 0, src, dst)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return mac_bytes(d["dst_mac"]) + mac_bytes(d["src_mac"]) + b"\x08\x00" + header + udp


def inject(iface, path):
    s = open_packet_socket(iface)
    sent = 0
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            d = json.loads(line)
            frame = bytes.fromhex(d["frame"]) if "frame" in d and "payload" not in d else build_frame(d)
            s.send(frame)
            sent += 1
            time.sleep(0.002)
    print(json.dumps({"sent": sent}))


def read_until_closed(conn, limit):
    conn.settimeout(1.0)
    got = b""
    closed = False
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        got += chunk
    return got, closed


def stream(address, port, data_hex):
    conn = socket.create_connection((address, int(port)), timeout=10)
    conn.sendall(bytes.fromhex(data_hex))
    got, closed = read_until_closed(conn, 10)
    print(json.dumps({"received": got.hex(), "closed": closed}))


def stream_handshake(address, port):
    conn = socket.create_connection((address, int(port)), timeout=10)
    # Handshake version 2 (stream version 4, docs/ha-protocol.md §4a).
    header = b"TDSA" + bytes([2, 1, 0, 0])
    conn.sendall(header + os.urandom(32))
    conn.settimeout(10)
    response = b""
    while len(response) < 72:
        chunk = conn.recv(72 - len(response))
        if not chunk:
            break
        response += chunk
    finish = b"TDSA" + bytes([2, 3, 0, 0]) + os.urandom(32)
    try:
        conn.sendall(finish)
    except OSError:
        pass
    got, closed = read_until_closed(conn, 10)
    print(json.dumps({"response": response.hex(), "after_finish": got.hex(), "closed": closed}))


def main():
    command = sys.argv[1]
    if command == "capture":
        capture(sys.argv[2], float(sys.argv[3]), sys.argv[4])
    elif command == "inject":
        inject(sys.argv[2], sys.argv[3])
    elif command == "stream":
        stream(sys.argv[2], sys.argv[3], sys.argv[4])
    elif command == "stream-handshake":
        stream_handshake(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
