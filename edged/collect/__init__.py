"""`edged collect`: a plant's central record of every station's results, rejects, audits and stats in
PostgreSQL, read from the central MQTT broker (README, "A plant").

config: collect.yaml; messages: a message checked and turned into a row; schema: tables, views and
their migrations; store: the PostgreSQL writer; collector: the MQTT side and the loop that acks a
message only after its row is committed.
"""
