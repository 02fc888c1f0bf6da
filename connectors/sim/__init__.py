"""The plant simulator: a physical model of a site's assets served over the plant's protocols.

`plant` (PlantModel: true and measured values per asset), `scenarios` (faults with known
times), `opcua_server`, `modbus_server`, `mqtt_gateway` (the devices), `truth` (true values
to Kafka) and `runner` (the Simulator behind `twin simulate`).
"""
