#!/bin/sh
echo "bye"
