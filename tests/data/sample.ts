# written by python/make_data_samples.py
@problemName Sample
@univariate false
@dimensions 2
@equalLength false
@classLabel true run walk
@data
0.5,1.5,2.5:-1.0,2.0,0.25:run
-3.0,0.0:4.0,1.0:walk
7.0,9.0,1.0:8.0,-9.5,1.0:walk
6.0:5.0:run
