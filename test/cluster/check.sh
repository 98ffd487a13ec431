#!/bin/sh
# HAProxy external check: the node at $3:$4 is up when it is Synced (wsrep_local_state 4) and in the
# primary component. HAProxy passes <proxy addr> <proxy port> <server addr> <server port>.
out=$(mariadb --no-defaults -h "$3" -P "$4" -uroot --connect-timeout=1 -N -B \
  -e "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_state', 'wsrep_cluster_status')" 2>/dev/null) || exit 1
echo "$out" | grep -q '^wsrep_local_state[[:space:]]4$' && echo "$out" | grep -q '^wsrep_cluster_status[[:space:]]Primary$'
