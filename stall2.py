import socket, sys, time, struct
n = int(sys.argv[1]); live_port = int(sys.argv[2])
held = []
for i in range(n):
    c = socket.create_connection(('127.0.0.1', 47003)); c.recv(1)
    c.sendall(b'D' + struct.pack('>Q', 2**63)); held.append(c)
time.sleep(2)
c = socket.create_connection(('127.0.0.1', live_port)); c.settimeout(10)
g = c.recv(1); c.sendall(b'D' + struct.pack('>Q', 2**63))
t = time.time(); got = 0
try:
    while time.time() - t < 3:
        got += len(c.recv(1 << 20))
except Exception as e:
    print("live error", e)
print(n, "stalled on 47003: live on", live_port, "got", got, "bytes in", round(time.time() - t, 1), "s")
